"""The dedup stage end to end: planted duplicates, labels, representatives, leakage, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.dedup import (
    DEDUP_COLUMNS,
    DedupOptions,
    choose_representatives,
    dedup,
    semantic_pairs,
)
from curate.dedup_clusters import dense_cluster_ids
from curate.ingest import IngestOptions, ingest
from curate.minhash import components
from thresher.cli import main
from thresher.errors import InputError, StageMissingError
from thresher.project import Project

ROOT = Path(__file__).resolve().parents[2]


def _make_project(tmp_path: Path, rows: list[dict], name: str = "proj") -> Project:
    src = tmp_path / f"{name}.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    project = Project.at(tmp_path / name)
    ingest([src], project, IngestOptions())
    return project


def _planted(n_clusters: int = 60, n_unique: int = 300, seed: int = 0):
    """Texts with planted exact/near/truncated variants; truth = cluster id or -1."""
    rng = np.random.default_rng(seed)
    vocab = [f"{w}{i}" for i, w in enumerate(rng.choice(list("abcdefghij"), 5000))]
    texts, truth = [], []

    def doc():
        return list(rng.choice(vocab, int(rng.integers(60, 120))))

    for c in range(n_clusters):
        words = doc()
        texts.append(" ".join(words))
        truth.append(c)
        for kind in rng.choice(["exact", "near", "trunc"], int(rng.integers(1, 4))):
            if kind == "exact":
                variant = "  ".join(words).upper()
            elif kind == "near":
                edited = list(words)
                for _ in range(max(1, len(words) // 50)):
                    edited[int(rng.integers(len(edited)))] = str(rng.choice(vocab))
                variant = " ".join(edited)
            else:
                variant = " ".join(words[: int(len(words) * 0.95)])
            texts.append(variant)
            truth.append(c)
    for _ in range(n_unique):
        texts.append(" ".join(doc()))
        truth.append(-1)
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], np.array(truth)[order]


def _pairs(labels) -> set[tuple[int, int]]:
    groups: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        if lab is not None and lab >= 0:
            groups.setdefault(int(lab), []).append(i)
    return {(a, b) for m in groups.values() for i, a in enumerate(m) for b in m[i + 1 :]}


def _read(project: Project):
    return pq.read_table(project.records_path("dedup")).to_pylist()


def test_planted_duplicates_are_found(tmp_path):
    texts, truth = _planted()
    project = _make_project(tmp_path, [{"text": t} for t in texts])
    result = dedup(project, DedupOptions(threshold=0.7))
    rows = _read(project)
    assert [r["text"] for r in rows] == texts  # order and content preserved
    found = _pairs([r["dup_cluster"] if r["dup_cluster"] is not None else -1 for r in rows])
    planted = _pairs(truth)
    tp = len(found & planted)
    assert tp / len(found) >= 0.98  # precision
    assert tp / len(planted) >= 0.95  # recall
    # distinct texts are never merged with each other
    uniques = [r for r, t in zip(rows, truth, strict=True) if t == -1]
    assert all(r["dup_cluster"] is None for r in uniques)
    assert result.clusters == len({r["dup_cluster"] for r in rows} - {None})
    assert result.removed == sum(not r["is_representative"] for r in rows)
    assert sum(r["is_representative"] for r in rows) == len(set(truth[truth >= 0])) + len(uniques)


def test_columns_kinds_and_normalisation(tmp_path):
    base = "the quick brown fox jumps over the lazy dog near the river bank today"
    rows = [
        {"text": base, "label": "a"},
        {
            "text": "  THE quick\tbrown fox jumps over the lazy dog near the river bank today ",
            "label": "a",
        },
        {"text": base.replace("today", "tonight"), "label": "b"},
        {"text": "something else entirely, with no relation at all to foxes", "label": "a"},
    ]
    project = _make_project(tmp_path, rows)
    result = dedup(project, DedupOptions(threshold=0.7))
    out = _read(project)
    table = pq.read_table(project.records_path("dedup"))
    for name in DEDUP_COLUMNS:
        assert name in table.column_names
    assert str(table.schema.field("dup_cluster").type) == "int64"
    assert [r["dup_kind"] for r in out] == ["exact", "exact", "near", None]
    assert out[0]["dup_cluster"] == out[1]["dup_cluster"] == out[2]["dup_cluster"] == 0
    assert out[3]["dup_cluster"] is None and out[3]["is_representative"]
    # labels a, a, b: conflict; majority "a", then longest → row 1 (extra spaces are longer)
    assert [r["label_conflict"] for r in out] == [True, True, True, False]
    assert [r["is_representative"] for r in out] == [False, True, False, True]
    assert all(r["semantic_cluster"] is None for r in out)
    assert (result.clusters, result.removed, result.label_conflicts) == (1, 2, 1)
    assert result.exact_clusters == 0 and result.near_clusters == 1


def test_punctuation_option_changes_exact_matches(tmp_path):
    rows = [{"text": "Hello, world! How are you?"}, {"text": "hello world how are you"}]
    project = _make_project(tmp_path, rows)
    assert dedup(project, DedupOptions()).clusters == 0
    result = dedup(project, DedupOptions(punctuation=True))
    assert result.clusters == 1 and result.exact_clusters == 1


def test_rerun_is_noop_and_force_redoes(tmp_path):
    texts, _ = _planted(5, 20)
    project = _make_project(tmp_path, [{"text": t} for t in texts])
    first = dedup(project, DedupOptions())
    again = dedup(project, DedupOptions())
    assert again.noop and not first.noop
    assert (again.clusters, again.removed) == (first.clusters, first.removed)
    assert not dedup(project, DedupOptions(), force=True).noop
    assert not dedup(project, DedupOptions(threshold=0.9)).noop  # config change


def test_deterministic_output(tmp_path):
    texts, _ = _planted(20, 50, seed=3)
    project = _make_project(tmp_path, [{"text": t, "label": "x"} for t in texts])
    dedup(project, DedupOptions(batch_size=16))
    first = _read(project)
    dedup(project, DedupOptions(batch_size=1000), force=True)
    assert _read(project) == first  # batch size does not change the result


def test_bad_and_empty_input(tmp_path):
    with pytest.raises(StageMissingError):
        dedup(Project.at(tmp_path / "nothing"), DedupOptions())
    project = _make_project(tmp_path, [{"text": "only one row"}])
    with pytest.raises(InputError):
        dedup(project, DedupOptions(threshold=1.5))
    with pytest.raises(InputError):
        dedup(project, DedupOptions(shingle="char", ngram=12))
    result = dedup(project, DedupOptions())
    assert (result.rows, result.clusters, result.removed) == (1, 0, 0)
    empty = _make_project(tmp_path, [{"text": ""}], name="empty")  # ingest rejects it: 0 rows
    result = dedup(empty, DedupOptions())
    assert result.rows == 0 and pq.read_table(empty.records_path("dedup")).num_rows == 0


def test_against_reports_leakage(tmp_path):
    texts, _ = _planted(10, 30, seed=5)
    train = _make_project(tmp_path, [{"text": t} for t in texts], name="train")
    leaked_exact = texts[0].upper()
    leaked_near = " ".join(texts[1].split()[:-2])
    eval_rows = [
        {"text": leaked_exact, "id": "e1"},
        {"text": leaked_near, "id": "e2"},
        {"text": "a fresh evaluation sentence that appears nowhere in training", "id": "e3"},
    ]
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in eval_rows))
    result = dedup(train, DedupOptions(threshold=0.7), against=eval_file)
    leaks = pq.read_table(train.stage_dir("dedup") / "leakage.parquet").to_pylist()
    ids = pq.read_table(train.records_path("ingest")).column("id").to_pylist()
    by_other = {}
    for leak in leaks:
        by_other.setdefault(leak["other_id"], set()).add(leak["id"])
    assert ids[0] in by_other["e1"] and ids[1] in by_other["e2"]
    assert "e3" not in by_other
    assert result.leaked == len({leak["id"] for leak in leaks}) >= 2
    # a project folder works as OTHER too
    other = _make_project(tmp_path, eval_rows, name="evalproj")
    again = dedup(train, DedupOptions(threshold=0.7), against=other.root)
    assert again.leaked == result.leaked and not again.noop


def test_semantic_pairs_blocked_equals_bruteforce():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16)).astype("float32")
    vectors[10] = vectors[20] + 0.01
    vectors[30] = vectors[20] - 0.01
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = vectors @ vectors.T
    want = {(i, j) for i, j in zip(*np.nonzero(sims >= 0.9), strict=True) if i < j}
    got = semantic_pairs(vectors, 0.9, block_bytes=4 * 300 * 7)  # 7-row blocks
    assert {tuple(p) for p in got.tolist()} == want
    assert {(10, 20), (20, 30), (10, 30)} <= want


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-1, 4), st.integers(-1, 2), st.integers(1, 50)),
        min_size=1,
        max_size=40,
    )
)
def test_representative_invariants(rows):
    cluster = np.array([r[0] for r in rows])
    # make cluster ids dense 0..C-1 and drop singletons' ids like the stage does
    ids = {c: i for i, c in enumerate(sorted({c for c in cluster if c >= 0}))}
    cluster = np.array([ids.get(c, -1) for c in cluster])
    codes = np.array([r[1] for r in rows], dtype=np.int32)
    lengths = np.array([r[2] for r in rows], dtype=np.int64)
    rep = choose_representatives(cluster, codes, lengths)
    assert rep[cluster < 0].all()
    for c in set(cluster[cluster >= 0].tolist()):
        members = np.flatnonzero(cluster == c)
        chosen = members[rep[members]]
        assert len(chosen) == 1
        labelled = codes[members][codes[members] >= 0]
        if len(labelled):
            counts = np.bincount(labelled)
            majority = int(np.argmax(counts))
            assert codes[chosen[0]] == majority
            eligible = members[codes[members] == majority]
        else:
            eligible = members
        best = max(eligible, key=lambda i: (lengths[i], -i))
        assert chosen[0] == best


def test_cli_json_and_errors(tmp_path):
    texts, _ = _planted(5, 10)
    project = _make_project(tmp_path, [{"text": t} for t in texts])
    runner = CliRunner()
    res = runner.invoke(main, ["curate", "dedup", "-p", str(project.root), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert {"clusters", "removed"} <= summary.keys() and summary["clusters"] >= 5
    res = runner.invoke(main, ["curate", "dedup", "-p", str(tmp_path / "none")])
    assert res.exit_code == 1 and "thresher curate ingest" in res.output
    res = runner.invoke(main, ["curate", "dedup", "-p", str(project.root), "--threshold", "2"])
    assert res.exit_code == 1 and "--threshold" in res.output
    res = runner.invoke(main, ["curate", "dedup", "-p", str(project.root), "--address", "h:6379"])
    assert res.exit_code == 2 and "--address needs --engine ray" in res.output


def test_dedup_command_does_not_import_heavy_libraries(tmp_path):
    project = _make_project(tmp_path, [{"text": "a b c d"}, {"text": "a b c d"}])
    code = (
        "import sys\n"
        "from thresher.cli import main\n"
        f"main(['curate', 'dedup', '-p', {str(project.root)!r}, '--json'], standalone_mode=False)\n"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'datasets',"
        " 'pandas', 'scipy', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["clusters"] == 1


@pytest.mark.slow
def test_semantic_flags_paraphrases_and_reuses_the_cache(tmp_path):
    rows = [
        {"text": "The cat sat on the mat.", "label": "a"},
        {"text": "A cat was sitting on the mat.", "label": "b"},
        {"text": "Quarterly revenue rose by ten percent.", "label": "a"},
    ]
    project = _make_project(tmp_path, rows)
    dedup(project, DedupOptions(semantic=True, semantic_threshold=0.8))
    out = _read(project)
    assert out[0]["semantic_cluster"] == out[1]["semantic_cluster"] == 0
    assert out[2]["semantic_cluster"] is None
    assert out[0]["label_conflict"] and not out[2]["label_conflict"]
    assert all(r["is_representative"] for r in out)  # flagged, not dropped
    cache = project.embedding_cache
    shards = sorted(cache.rglob("*.npz"))
    assert shards
    dedup(project, DedupOptions(semantic=True, semantic_threshold=0.8), force=True)
    assert sorted(cache.rglob("*.npz")) == shards  # nothing re-embedded


def test_dense_cluster_ids_follow_the_union_find_labels():
    edges = np.array([[5, 2], [2, 7], [0, 9], [3, 3]])
    dense, count = dense_cluster_ids(components(10, edges))
    assert count == 2
    assert dense.tolist() == [0, -1, 1, -1, -1, 1, -1, 1, -1, 0]
