"""Query strategies on hand-made probability arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loop.errors import (
    EmptyPoolError,
    InvalidPredictionsError,
    MissingEmbeddingsError,
    StrategyError,
    UnknownStrategyError,
)
from loop.strategies import (
    available_strategies,
    badge_pick,
    entropy_scores,
    get_strategy,
    least_confidence_scores,
    margin_scores,
    reason_of,
    register_strategy,
    rereview,
)

PROBS = np.array(
    [
        [0.98, 0.01, 0.01],  # 0 confident
        [0.40, 0.35, 0.25],  # 1 small margin, low max
        [0.50, 0.49, 0.01],  # 2 smallest margin, but low entropy vs row 3
        [0.34, 0.33, 0.33],  # 3 most uncertain by entropy and least-confidence
        [0.70, 0.20, 0.10],  # 4
    ]
)


def test_least_confidence_picks_lowest_max_prob():
    assert get_strategy("least-confidence")(PROBS, 2).tolist() == [3, 1]
    np.testing.assert_allclose(least_confidence_scores(PROBS)[[0, 3]], [0.02, 0.66])


def test_margin_picks_smallest_top2_gap():
    assert get_strategy("margin")(PROBS, 3).tolist() == [3, 2, 1]
    np.testing.assert_allclose(margin_scores(PROBS)[2], 0.99)


def test_entropy_orders_by_normalized_entropy():
    assert get_strategy("entropy")(PROBS, 2).tolist() == [3, 1]
    scores = entropy_scores(PROBS)
    assert scores.max() <= 1.0 + 1e-12 and scores.min() >= 0.0
    np.testing.assert_allclose(entropy_scores(np.array([[0.5, 0.5]])), [1.0])


def test_margin_ties_broken_by_confidence_then_position():
    probs = np.array(
        [
            [0.45, 0.45, 0.10],  # margin 0, max 0.45
            [0.30, 0.30, 0.40],  # margin 0.1
            [0.40, 0.40, 0.20],  # margin 0, max 0.40: less confident → first
            [0.45, 0.45, 0.10],  # exact copy of row 0 → after it
        ]
    )
    assert get_strategy("margin")(probs, 4).tolist() == [2, 0, 3, 1]
    # float noise must not reorder a tie
    noisy = probs.copy()
    noisy[3] = [0.45 + 1e-13, 0.45 - 1e-13, 0.10]
    assert get_strategy("margin")(noisy, 4).tolist() == [2, 0, 3, 1]


def test_random_is_seeded_distinct_and_capped():
    rand = get_strategy("random")
    a = rand(np.full((50, 2), 0.5), 10, seed=3)
    assert a.tolist() == rand(np.full((50, 2), 0.5), 10, seed=3).tolist()
    assert a.tolist() != rand(np.full((50, 2), 0.5), 10, seed=4).tolist()
    assert len(set(a.tolist())) == 10
    assert len(rand(np.full((4, 2), 0.5), 10)) == 4


def test_validation_errors_are_named():
    margin = get_strategy("margin")
    with pytest.raises(InvalidPredictionsError, match="sums to"):
        margin(np.array([[0.5, 0.6]]), 1)
    with pytest.raises(InvalidPredictionsError, match="NaN"):
        margin(np.array([[np.nan, 1.0]]), 1)
    with pytest.raises(InvalidPredictionsError, match="2-D"):
        margin(np.array([0.5, 0.5]), 1)
    with pytest.raises(EmptyPoolError):
        margin(np.zeros((0, 2)), 1)
    with pytest.raises(StrategyError, match="positive"):
        margin(PROBS, 0)
    with pytest.raises(UnknownStrategyError, match="available"):
        get_strategy("marginn")
    with pytest.raises(UnknownStrategyError, match="kmeans"):
        get_strategy("margin+dbscan")
    with pytest.raises(MissingEmbeddingsError):
        get_strategy("margin+kmeans")(PROBS, 2)


def _clusters(seed: int = 0):
    """Three tight embedding clusters; cluster 0 holds the 6 most uncertain rows."""
    rng = np.random.default_rng(seed)
    centers = np.eye(3, 8, dtype=np.float32) * 5
    cluster = np.array([0] * 6 + [1] * 3 + [2] * 3)
    emb = centers[cluster] + rng.normal(0, 0.01, (12, 8)).astype(np.float32)
    p = np.linspace(0.5, 0.95, 12)  # row 0 most uncertain
    return np.column_stack([p, 1 - p]), emb, cluster


@pytest.mark.parametrize("method", ["kmeans", "coreset", "badge"])
def test_diversity_spreads_batch_over_clusters(method):
    probs, emb, cluster = _clusters()
    plain = get_strategy("margin")(probs, 3)
    assert set(cluster[plain]) == {0}  # plain uncertainty: 3 near-copies
    diverse = get_strategy(f"margin+{method}", factor=4)(probs, 3, embeddings=emb, seed=1)
    assert sorted(cluster[diverse]) == [0, 1, 2]
    assert diverse[0] == 0  # the most uncertain row stays, and output keeps uncertainty order
    assert list(diverse) == sorted(diverse)


def test_coreset_avoids_what_is_already_labelled():
    probs, emb, cluster = _clusters()
    labelled = emb[[0, 6]]  # clusters 0 and 1 already covered
    picked = get_strategy("margin+coreset", factor=12)(
        probs, 1, embeddings=emb, labeled_embeddings=labelled
    )
    assert cluster[picked].tolist() == [2]


def test_rereview_finds_confident_disagreements_first():
    probs = np.array([[0.95, 0.05], [0.2, 0.8], [0.6, 0.4], [0.99, 0.01], [0.5, 0.5]])
    labels = np.array([1, 1, 1, 1, -1])
    rr = rereview(probs, labels, threshold=0.9, flagged=np.array([0, 1, 0, 0, 1], bool))
    assert rr.positions.tolist() == [3, 0, 1]  # 4 has no label: never selected
    assert rr.reasons == ("model-error", "model-error", "conflict")
    np.testing.assert_allclose(rr.scores, [0.99, 0.95, 0.2])
    assert rereview(probs, labels, 1).positions.tolist() == [3]
    with pytest.raises(StrategyError):
        rereview(probs, labels[:3])


def test_registry_accepts_user_strategies():
    @register_strategy("test-first-rows", replace=True)
    def first_rows(probs, n, *, embeddings=None, labeled_embeddings=None, seed=0):
        return np.arange(min(n, len(probs)))

    assert "test-first-rows" in available_strategies()
    assert get_strategy("test-first-rows")(PROBS, 2).tolist() == [0, 1]
    with pytest.raises(StrategyError, match="already registered"):
        register_strategy("margin", first_rows)
    assert reason_of("margin") == "uncertain"
    assert reason_of("margin+kmeans") == "diverse"
    assert reason_of("random") == "random"


@settings(max_examples=60, deadline=None)
@given(
    n_rows=st.integers(1, 30),
    k=st.integers(2, 5),
    n=st.integers(1, 40),
    seed=st.integers(0, 1000),
    name=st.sampled_from(["least-confidence", "margin", "entropy", "random"]),
)
def test_selection_invariants(n_rows, k, n, seed, name):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(k), size=n_rows)
    picked = get_strategy(name)(probs, n, seed=seed)
    assert len(picked) == min(n, n_rows)
    assert len(set(picked.tolist())) == len(picked)
    assert ((picked >= 0) & (picked < n_rows)).all()
    assert picked.tolist() == get_strategy(name)(probs, n, seed=seed).tolist()
    if name != "random":  # the selection is a prefix of the full ranking
        full = get_strategy(name)(probs, n_rows)
        assert picked.tolist() == full[: len(picked)].tolist()


@settings(max_examples=40, deadline=None)
@given(
    n_rows=st.integers(1, 40),
    k=st.integers(2, 4),
    seed=st.integers(0, 1000),
    threshold=st.floats(0.5, 1.0),
)
def test_rereview_invariants(n_rows, k, seed, threshold):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(k) * 0.3, size=n_rows)
    labels = rng.integers(-1, k, size=n_rows)
    flagged = rng.random(n_rows) < 0.2
    rr = rereview(probs, labels, threshold=threshold, flagged=flagged)
    pos = rr.positions
    assert len(set(pos.tolist())) == len(pos)
    assert (labels[pos] >= 0).all()  # never an unlabelled row
    for p, why in zip(pos, rr.reasons, strict=True):
        if why == "model-error":
            assert probs[p].argmax() != labels[p] and probs[p].max() >= threshold
        else:
            assert flagged[p]
    errors = [i for i, why in enumerate(rr.reasons) if why == "model-error"]
    assert errors == list(range(len(errors)))  # model errors come first
    assert (np.diff(rr.scores[: len(errors)]) <= 1e-12).all()  # most confident first


@settings(max_examples=25, deadline=None)
@given(n_rows=st.integers(2, 60), n=st.integers(1, 10), seed=st.integers(0, 100))
def test_diverse_picks_are_distinct_uncertain_candidates(n_rows, n, seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3), size=n_rows)
    emb = rng.normal(size=(n_rows, 5))
    candidates = set(get_strategy("entropy")(probs, min(n_rows, 3 * n)).tolist())
    for method in ("kmeans", "coreset", "badge"):
        picked = get_strategy(f"entropy+{method}", factor=3)(probs, n, embeddings=emb, seed=seed)
        assert len(picked) == min(n, n_rows) and len(set(picked.tolist())) == len(picked)
        assert set(picked.tolist()) <= candidates


def test_coverage_pick_takes_one_central_member_per_cluster_biggest_first():
    from loop.strategies import coverage_pick

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    sizes = [60, 30, 10]
    points = np.concatenate(
        [c + rng.normal(0, 0.5, (n, 2)) for c, n in zip(centres, sizes, strict=True)]
    )
    picked = coverage_pick(points, 3, seed=1)
    owner = np.repeat([0, 1, 2], sizes)
    assert owner[picked].tolist() == [0, 1, 2]  # every cluster once, the biggest first
    for i in picked:  # each pick is near its cluster's centre
        assert np.linalg.norm(points[i] - centres[owner[i]]) < 0.6
    assert len(set(coverage_pick(points, 40, seed=1).tolist())) == 40
    assert coverage_pick(points, 200).tolist() == list(range(100))


def test_badge_distance_is_the_gradient_embeddings_distance():
    """badge_pick never builds (p - onehot) ⊗ x; its k-means++ draw must match one that does."""
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), size=40)
    x = rng.normal(size=(40, 6))
    r = probs.copy()
    r[np.arange(40), probs.argmax(axis=1)] -= 1.0
    g = (r[:, :, None] * x[:, None, :]).reshape(40, -1)
    # the reference: k-means++ seeding on the explicit gradient embeddings
    draw = np.random.default_rng(7)
    chosen = [int(np.argmax((g * g).sum(axis=1)))]
    d = ((g - g[chosen[0]]) ** 2).sum(axis=1)
    while len(chosen) < 8:
        w = d.copy()
        w[chosen] = 0.0
        nxt = int(draw.choice(40, p=w / w.sum()))
        chosen.append(nxt)
        d = np.minimum(d, ((g - g[nxt]) ** 2).sum(axis=1))
    assert badge_pick(probs, x, 8, seed=7).tolist() == chosen


def test_badge_trades_uncertainty_for_diversity():
    """Two identical uncertain rows: BADGE never takes both (distance 0). Confident rows have
    gradients at the origin, so once one is in the batch the others weigh nothing: a batch of 6
    from 5 uncertain rows in distinct directions and 20 confident rows holds at most one."""
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.6, 0.4], [0.999, 0.001]])
    assert get_strategy("margin")(probs, 2).tolist() == [0, 1]  # plain margin: both copies
    for seed in range(50):
        picked = get_strategy("badge")(probs, 2, embeddings=x, seed=seed).tolist()
        assert picked[0] == 0 and picked[1] != 1  # the longest gradient first, never its copy
    x = np.vstack([np.eye(5), np.random.default_rng(0).normal(size=(20, 5))])
    probs = np.vstack([np.tile([0.55, 0.45], (5, 1)), np.tile([1.0, 0.0], (20, 1))])
    for seed in range(50):
        picked = badge_pick(probs, x, 6, seed=seed)
        assert set(range(5)) <= set(picked.tolist())


def test_badge_is_seeded_and_falls_back_to_rank_order_without_gradients():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(2), size=50)
    x = rng.normal(size=(50, 4))
    badge = get_strategy("badge")
    assert (
        badge(probs, 10, embeddings=x, seed=5).tolist()
        == badge(probs, 10, embeddings=x, seed=5).tolist()
    )
    one_class = np.tile([1.0, 0.0], (6, 1))  # a one-class model: every gradient is 0
    assert badge_pick(one_class, x[:6], 3).tolist() == [0, 1, 2]
    with pytest.raises(MissingEmbeddingsError, match="badge"):
        badge(probs, 3)
