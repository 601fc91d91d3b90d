import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from review.agreement import (
    agreement_with_others,
    annotator_agreement,
    cleanlab_consensus,
    cohen_kappa,
    fleiss_kappa,
    krippendorff_alpha_nominal,
    majority_consensus,
)

N = None


def test_alpha_hand_computed_two_coders():
    # units (a,a),(a,b),(b,b),(b,b): o_aa=2, o_ab=o_ba=1, o_bb=4; n_a=3, n_b=5, n=8
    # alpha = 1 - (n-1) * D_o / sum_{c!=k} n_c n_k = 1 - 7 * 2 / 30
    items = [["a", "a"], ["a", "b"], ["b", "b"], ["b", "b"]]
    assert krippendorff_alpha_nominal(items) == pytest.approx(1 - 14 / 30)


def test_alpha_krippendorff_published_example_with_missing_values():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 coders, 12 units,
    # missing values; nominal alpha = 0.743.
    coders = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
        [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
    ]
    items = [list(unit) for unit in zip(*coders, strict=True)]
    assert krippendorff_alpha_nominal(items) == pytest.approx(0.743, abs=5e-4)


def test_fleiss_kappa_wikipedia_example():
    # 10 subjects, 14 raters, 5 categories; kappa = 0.210 (Fleiss 1971 worked example).
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    items = [[cat for cat, n in enumerate(row) for _ in range(n)] for row in table]
    assert fleiss_kappa(items) == pytest.approx(0.2099, abs=1e-4)


def test_perfect_and_undefined_agreement():
    assert krippendorff_alpha_nominal([["x", "x"], ["y", "y", "y"]]) == 1.0
    assert fleiss_kappa([["x", "x"], ["y", "y"]]) == 1.0
    assert math.isnan(krippendorff_alpha_nominal([["x", "x"], ["x", "x"]]))
    assert math.isnan(fleiss_kappa([["x"], ["y", None]]))


def test_majority_consensus_flags_ties_and_disagreement():
    c = majority_consensus(["a", "a", "b"])
    assert (c.label, c.n_annotators, c.tie, c.disagreement) == ("a", 3, False, True)
    assert c.agreement == pytest.approx(2 / 3)
    tie = majority_consensus(["a", "b", None])
    assert tie.label is None and tie.tie and tie.n_annotators == 2
    unanimous = majority_consensus(["b", "b"])
    assert unanimous.label == "b" and not unanimous.disagreement and unanimous.agreement == 1.0
    assert majority_consensus([None]).n_annotators == 0


def test_cohen_kappa_hand_computed():
    # p_o = 3/4; p_e = (2*1 + 2*3)/16 = 0.5; kappa = 0.5
    assert cohen_kappa(["a", "a", "b", "b"], ["a", "b", "b", "b"]) == pytest.approx(0.5)


def test_annotator_agreement_against_consensus():
    by = {"ann": {1: "a", 2: "b", 3: "a"}, "bob": {1: "a", 2: "a"}}
    consensus = {1: "a", 2: "b", 3: None}
    stats = {s.annotator: s for s in annotator_agreement(by, consensus)}
    assert stats["ann"].n_labelled == 3 and stats["ann"].n_with_consensus == 2
    assert stats["ann"].agreement_with_consensus == 1.0
    assert stats["bob"].agreement_with_consensus == 0.5


@given(
    st.lists(
        st.lists(st.sampled_from(["a", "b", "c", None]), min_size=2, max_size=4),
        min_size=1,
        max_size=30,
    )
)
def test_alpha_and_kappa_are_bounded_and_perfect_when_unanimous(items):
    for value in (krippendorff_alpha_nominal(items), fleiss_kappa(items)):
        assert math.isnan(value) or -1.0 - 1e-9 <= value <= 1.0 + 1e-9
    unanimous = [[v[0]] * len(v) for v in items if v[0] is not None]
    value = krippendorff_alpha_nominal(unanimous)
    assert math.isnan(value) or value == pytest.approx(1.0)


def test_cleanlab_consensus_follows_the_majority_and_scores_annotators():
    rng = np.random.default_rng(0)
    classes = ["neg", "pos"]
    truth = rng.integers(0, 2, size=60)
    good = [classes[t] for t in truth]
    noisy = [classes[1 - t] if rng.random() < 0.4 else classes[t] for t in truth]
    items = [[g, g, n] for g, n in zip(good, noisy, strict=True)]
    probs = np.where(truth[:, None] == np.arange(2), 0.8, 0.2)
    out = cleanlab_consensus(items, ["a1", "a2", "sloppy"], probs, classes)
    assert out is not None
    assert out["consensus_label"] == good
    q = out["annotator_quality"]
    assert q["sloppy"] < min(q["a1"], q["a2"])
    assert cleanlab_consensus([["a", None]], ["x", "y"], np.ones((1, 2)) / 2, ["a", "b"]) is None


def test_two_annotators_leave_one_out_is_their_pairwise_agreement_not_1():
    # they agree on 1, 2, 4 and disagree on 3, 5; only ann labelled 6
    ann = {1: "a", 2: "b", 3: "a", 4: "a", 5: "b", 6: "a"}
    bob = {1: "a", 2: "b", 3: "b", 4: "a", 5: "a"}
    by = {"ann": ann, "bob": bob}
    flattering = {s.annotator: s for s in annotator_agreement(by, {1: "a", 2: "b", 4: "a"})}
    assert flattering["ann"].agreement_with_consensus == 1.0  # the consensus exists only
    assert flattering["bob"].agreement_with_consensus == 1.0  # where they agree
    stats = {s.annotator: s for s in agreement_with_others(by)}
    for name in ("ann", "bob"):
        s = stats[name]
        assert s.n_with_others == 5 and s.n_pairs == 5
        assert s.agreement_with_others == pytest.approx(3 / 5) == s.pairwise_agreement
    # ann = a,b,a,a,b vs bob = a,b,b,a,a: p_o = 3/5, p_e = (3*3 + 2*2)/25 = 13/25
    assert stats["ann"].kappa_with_others == pytest.approx((3 / 5 - 13 / 25) / (12 / 25))


def test_three_annotators_leave_one_out_hand_computed():
    by = {
        "A": {1: "x", 2: "x", 3: "y", 4: "x", 5: "x"},
        "B": {1: "x", 2: "y", 3: "y", 4: "x", 6: "z"},
        "C": {1: "x", 2: "y", 3: "x", 5: "y"},
    }
    stats = {s.annotator: s for s in agreement_with_others(by)}
    # A: 1 others x,x -> x (match); 2 y,y -> y (no); 3 y,x tie (left out); 4 x (match); 5 y (no)
    # pairs: 1: 2 of 2 same; 2: 0 of 2; 3: 1 of 2; 4: 1 of 1; 5: 0 of 1 -> 4 / 8
    a = stats["A"]
    assert (a.n_with_others, a.agreement_with_others) == (4, 0.5)
    assert (a.n_pairs, a.pairwise_agreement) == (8, 0.5)
    assert a.kappa_with_others == pytest.approx(0.0)  # mine all x: p_o = p_e = 1/2
    # B: 1 x (match); 2 x,y tie; 3 y,x tie; 4 x (match); 6 alone -> 2 of 2
    # pairs: 1: 2/2; 2: 1/2; 3: 1/2; 4: 1/1 -> 5 / 7
    b = stats["B"]
    assert (b.n_with_others, b.agreement_with_others) == (2, 1.0)
    assert (b.n_pairs, b.pairwise_agreement) == (7, pytest.approx(5 / 7))
    # C: 1 x (match); 2 x,y tie; 3 y,y -> y (no); 5 x (no) -> 1 of 3
    # pairs: 1: 2/2; 2: 1/2; 3: 0/2; 5: 0/1 -> 3 / 7
    c = stats["C"]
    assert (c.n_with_others, c.agreement_with_others) == (3, pytest.approx(1 / 3))
    assert (c.n_pairs, c.pairwise_agreement) == (7, pytest.approx(3 / 7))


def test_leave_one_out_without_overlap_is_undefined():
    stats = agreement_with_others({"solo": {1: "a"}, "other": {2: "a", 3: None}})
    assert all(s.n_with_others == 0 and s.n_pairs == 0 for s in stats)
    assert all(
        math.isnan(s.agreement_with_others) and math.isnan(s.pairwise_agreement) for s in stats
    )


@given(
    st.dictionaries(
        st.integers(0, 20),
        st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["a", "b", "c"])),
        max_size=25,
    )
)
def test_with_two_annotators_leave_one_out_equals_pairwise_and_is_symmetric(items):
    by = {"p": {i: v[0] for i, v in items.items()}, "q": {i: v[1] for i, v in items.items()}}
    p, q = agreement_with_others(by)
    for s in (p, q):
        assert s.n_with_others == s.n_pairs == len(items)
        assert s.agreement_with_others == s.pairwise_agreement or not items
    assert p.agreement_with_others == q.agreement_with_others or not items
