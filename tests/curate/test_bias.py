import numpy as np
import pytest

from curate import bias
from thresher.errors import ConfigError


def test_default_lexicon_covers_the_axes():
    lex = bias.default_lexicon()
    axes = {g.split(":")[0] for g in lex}
    assert {
        "gender",
        "race_ethnicity",
        "religion",
        "nationality",
        "age",
        "disability",
        "sexual_orientation",
    } <= axes


def test_word_boundary_matching():
    m = bias.Matcher({"g:f": ["woman", "women"], "g:m": ["man"], "x": ["native american"]})
    assert m.groups("A woman walks") == ["g:f"]
    assert m.groups("the manual of womanhood") == []
    assert m.groups("MAN, oh man!") == ["g:m"]
    assert m.groups("a Native   American director") == ["x"]
    assert m.groups("non-man") == []


def test_wildcard_term():
    m = bias.Matcher({"r": ["muslim*"]})
    assert m.groups("Muslims pray") == ["r"] and m.groups("amuslim") == []


def test_user_lexicon_extends_and_replaces(tmp_path):
    path = tmp_path / "lex.yaml"
    path.write_text("occupation:nurse: [nurse, nurses]\ngender:female: [gal]\n")
    lex = bias.load_lexicon(path)
    assert lex["occupation:nurse"] == ["nurse", "nurses"]
    assert lex["gender:female"] == ["gal"]
    assert "religion:muslim" in lex
    assert set(bias.load_lexicon(path, replace=True)) == {"occupation:nurse", "gender:female"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        bias.load_lexicon(bad)
    with pytest.raises(ConfigError, match="not found"):
        bias.load_lexicon(tmp_path / "missing.yaml")


def test_benjamini_hochberg_matches_reference():
    from scipy.stats import false_discovery_control

    p = np.random.default_rng(0).random(50) ** 3
    assert np.allclose(bias.benjamini_hochberg(p), false_discovery_control(p, method="bh"))


def _planted(n=2000, seed=0):
    """Texts mentioning women are mostly 'neg'; everything else is balanced."""
    rng = np.random.default_rng(seed)
    fillers = "the film was about a trip through the city at night with friends".split()
    texts, labels = [], []
    for i in range(n):
        words = list(rng.choice(fillers, size=8))
        if i % 10 == 0:
            words.insert(3, str(rng.choice(["women", "woman", "girls"])))
            label = "neg" if rng.random() < 0.85 else "pos"
        elif i % 10 == 1:
            words.insert(3, str(rng.choice(["men", "boys"])))
            label = "neg" if rng.random() < 0.5 else "pos"
        else:
            label = "neg" if rng.random() < 0.5 else "pos"
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def test_planted_bias_ranked_first():
    texts, labels = _planted()
    groups, report = bias.score_bias(texts, labels)
    top = report.groups[0]
    assert (top["name"], top["label"]) == ("gender:female", "neg")
    assert top["significant"] and top["lift"] > 1.5
    male = [g for g in report.groups if g["name"] == "gender:male"]
    assert male and not any(g["significant"] for g in male)
    assert groups[0] == ["gender:female"] and groups[2] == []
    # Data-driven terms find the same skew without the lexicon.
    neg_terms = [t["term"] for t in report.data_driven_terms if t["label"] == "neg"][:3]
    assert {"women", "woman", "girls"} & set(neg_terms)


def test_no_association_when_labels_are_independent():
    rng = np.random.default_rng(1)
    texts = [("she " if rng.random() < 0.2 else "") + "went home" for _ in range(1000)]
    labels = [str(rng.choice(["a", "b"])) for _ in texts]
    _, report = bias.score_bias(texts, labels)
    assert not any(g["significant"] for g in report.groups)


def test_slice_table_noise_rates():
    groups = [["g"], ["g"], [], [], ["g"], []]
    labels = ["a", "b", "a", None, "a", "b"]
    issues = [True, False, False, False, True, False]
    rows = {
        r["slice"]: r
        for r in bias.slice_table(groups, labels, issues, [0.1, 0.9, 0.8, np.nan, 0.2, 0.7])
    }
    assert rows["g"]["size"] == 3 and rows["g"]["noise_rate"] == pytest.approx(2 / 3)
    assert rows["(all)"]["labeled"] == 5 and rows["(all)"]["noise_rate"] == pytest.approx(0.4)
    assert rows["g"]["label_rates"] == {"a": pytest.approx(2 / 3), "b": pytest.approx(1 / 3)}


def test_unlabeled_and_empty_inputs():
    assert bias.associations([["g"]] * 3, [None] * 3) == []
    assert bias.log_odds_terms(["a b"], [None]) == []
