"""Pre-labels on unlabelled input: zero-shot, few-shot, a local LM, an OpenAI-compatible server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from review.agreement import label_agreement, prelabeller_agreement
from review.prelabel import (
    PrelabelOptions,
    choose_method,
    label_prompts,
    pick_by_agreement,
    prelabel,
    read_prelabels,
    zero_shot_probs,
)
from review.prelabel_llm import choice_probs, endpoint_base
from review.prelabel_setfit import SetFitOptions, contrastive_pairs, encode, tune_encoder
from tests.tune.conftest import tiny_llama  # noqa: F401 - the fixture
from thresher.cli import main
from thresher.config import load_config
from thresher.errors import ConfigError, InputError
from thresher.project import Project

POS = [
    "a wonderful, moving film with brilliant acting",
    "I loved every minute, a delightful and funny movie",
    "superb direction and a charming story, highly recommended",
    "one of the best films of the year, warm and clever",
    "a joyful triumph, beautifully shot and acted",
    "great fun from start to finish, I adored it",
    "an uplifting masterpiece that made me smile",
    "brilliant, touching and wonderfully written",
    "a gorgeous film, I would happily watch it again",
    "excellent performances and a lovely script",
]
NEG = [
    "a dull, tedious mess with awful acting",
    "boring and lifeless, I wanted to leave the cinema",
    "clumsy direction and a bland, tiresome script",
    "one of the worst films of the year, flat and messy",
    "a tedious failure, badly shot and badly acted",
    "painful to sit through, I hated it",
    "a depressing disaster that wasted my evening",
    "awful, dreary and terribly written",
    "an ugly film, I would never watch it again",
    "terrible performances and a stupid script",
]
DESCRIPTIONS = {
    "pos": ["a positive movie review", "the critic liked the film"],
    "neg": ["a negative movie review", "the critic disliked the film"],
}


def unlabelled_project(tmp_path, descriptions=True, labels=("neg", "pos"), extra=()) -> Project:
    """An ingested project without a single label (gold kept aside in ``GOLD``)."""
    from curate.ingest import IngestOptions, ingest

    rows = [{"id": f"p{i}", "text": t} for i, t in enumerate(POS)]
    rows += [{"id": f"n{i}", "text": t} for i, t in enumerate(NEG)]
    rows += list(extra)
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    project = Project.at(tmp_path / "proj")
    config = {"labels": list(labels)}
    if descriptions:
        config["label_descriptions"] = DESCRIPTIONS
    project.root.mkdir(parents=True, exist_ok=True)
    (project.root / "thresher.yaml").write_text(json.dumps(config))
    ingest([src], project, IngestOptions())
    return project


GOLD = {f"p{i}": "pos" for i in range(10)} | {f"n{i}": "neg" for i in range(10)}


def prelabel_options(project: Project, **kw) -> PrelabelOptions:
    config = load_config(project.root)
    base = dict(labels=tuple(config.get("labels")), descriptions=config.get("label_descriptions"))
    return PrelabelOptions(**{**base, **kw})


def _accuracy(project: Project) -> float:
    pre = read_prelabels(project)
    return float(np.mean([pre[i][0] == g for i, g in GOLD.items()]))


def test_label_prompts_default_to_names_and_check_keys():
    assert label_prompts(["a", "b"], None) == {"a": ["a"], "b": ["b"]}
    assert label_prompts(["a", "b"], {"a": "first"}) == {"a": ["first"], "b": ["b"]}
    assert label_prompts(["a", "b"], {"b": ["x", " ", "y"]})["b"] == ["x", "y"]
    with pytest.raises(InputError, match="not in labels"):
        label_prompts(["a", "b"], {"c": "?"})


def test_config_label_descriptions_must_name_labels(tmp_path):
    (tmp_path / "thresher.yaml").write_text("labels: [a, b]\nlabel_descriptions: {a: x, c: y}\n")
    with pytest.raises(ConfigError, match="describes c, not in labels"):
        load_config(tmp_path)
    (tmp_path / "thresher.yaml").write_text("labels: [a, b]\nlabel_descriptions: [a, b]\n")
    with pytest.raises(ConfigError, match="label_descriptions"):
        load_config(tmp_path)


def test_zero_shot_probs_pick_the_closest_description():
    rng = np.random.default_rng(0)
    protos = rng.normal(size=(3, 16))
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    truth = rng.integers(0, 3, size=60)
    x = protos[truth] + 0.3 * rng.normal(size=(60, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    desc = [protos[j : j + 1] for j in range(3)]
    probs = zero_shot_probs(x, desc, temperature=0.05)
    assert np.allclose(probs.sum(axis=1), 1) and (probs.argmax(axis=1) == truth).mean() > 0.9
    soft = zero_shot_probs(x, desc, temperature=1.0)
    assert soft.max(axis=1).mean() < probs.max(axis=1).mean()  # a higher temperature is softer
    assert (soft.argmax(axis=1) == probs.argmax(axis=1)).all()  # and ranks the same
    with pytest.raises(InputError):
        zero_shot_probs(x, desc, temperature=0)


def test_choose_method():
    labels = ["a", "b"]
    assert choose_method("auto", ["a"] * 8 + ["b"] * 7, labels, 8) == "zero-shot"
    assert choose_method("auto", ["a"] * 8 + ["b"] * 8, labels, 8) == "select"
    assert choose_method("zero-shot", ["a"] * 8 + ["b"] * 8, labels, 8) == "zero-shot"
    assert choose_method("http://localhost:8000/v1", [], labels, 8) == "endpoint"
    assert choose_method("some/model", [], labels, 8) == "llm"
    with pytest.raises(InputError, match="few-shot needs 8"):
        choose_method("few-shot", ["a"] * 8, labels, 8)
    assert choose_method("setfit", ["a"] * 8 + ["b"] * 8, labels, 8) == "setfit"
    with pytest.raises(InputError, match="setfit needs 8"):
        choose_method("setfit", ["a"] * 8, labels, 8)


def test_zero_shot_prelabel_on_an_unlabelled_project(tmp_path):
    project = unlabelled_project(tmp_path)
    result = prelabel(project, prelabel_options(project))
    assert result.method == "zero-shot" and result.records == 20 and result.reviewed == 0
    assert result.agreement is None
    table = pq.read_table(result.path).to_pandas()
    assert list(table.columns[:4]) == ["id", "label", "score", "model"]
    assert {"p_neg", "p_pos"} <= set(table.columns)
    assert np.allclose(table[["p_neg", "p_pos"]].sum(axis=1), 1)
    assert np.allclose(table[["p_neg", "p_pos"]].max(axis=1), table["score"])
    assert _accuracy(project) >= 0.8
    assert sum(result.counts.values()) == 20


def test_labels_are_required(tmp_path):
    project = unlabelled_project(tmp_path, descriptions=False, labels=())
    with pytest.raises(InputError, match="labels: \\[a, b\\]"):
        prelabel(project, prelabel_options(project))


def _write_reviews(project: Project, per_class: int) -> None:
    ids = [f"p{i}" for i in range(per_class)] + [f"n{i}" for i in range(per_class)]
    table = pa.table({"id": ids, "label": [GOLD[i] for i in ids]})
    project.annotations_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, project.annotations_path)


def test_with_enough_reviews_auto_picks_the_best_agreeing_pre_labeller(tmp_path):
    project = unlabelled_project(tmp_path, descriptions=False)
    _write_reviews(project, 4)
    small = prelabel(project, prelabel_options(project, min_per_class=5))
    assert small.method == "zero-shot" and small.reviewed == 8
    assert small.agreement["how"] == "held-out" and small.agreement["n"] == 8
    _write_reviews(project, 8)
    result = prelabel(project, prelabel_options(project))
    candidates = result.agreement["candidates"]
    assert set(candidates) == {"zero-shot", "few-shot", "zero+few-shot"}
    assert result.method in candidates and result.model.startswith(result.method + ":")
    assert result.agreement["macro_f1"] == max(candidates.values())
    assert result.agreement["n"] == 16
    forced = prelabel(project, prelabel_options(project, model="few-shot"))
    assert forced.method == "few-shot" and forced.agreement["how"] == "cross-validated"
    assert "candidates" not in forced.agreement and forced.agreement["accuracy"] >= 0.75
    assert _accuracy(project) >= 0.85


def test_pick_by_agreement_takes_the_better_candidate():
    gold = ["a", "a", "b", "b"]
    right = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    wrong = right[:, ::-1]
    best, scores = pick_by_agreement({"w": (wrong, None), "r": (right, None)}, gold, ["a", "b"])
    assert best == "r" and scores["r"]["accuracy"] == 1.0 and scores["w"]["accuracy"] == 0.0
    tie, _ = pick_by_agreement({"x": (right, None), "y": (right, None)}, gold, ["a", "b"])
    assert tie == "x"


def test_llm_prelabel_tiny_model(tmp_path, tiny_llama):  # noqa: F811 - the fixture
    project = unlabelled_project(tmp_path)
    result = prelabel(project, prelabel_options(project, model=tiny_llama))
    assert result.method == "llm"
    table = pq.read_table(result.path).to_pandas()
    probs = table[["p_neg", "p_pos"]].to_numpy()
    assert len(table) == 20 and np.allclose(probs.sum(axis=1), 1) and (probs > 0).all()
    # a random model, but a deterministic one: the same question gets the same answer
    again = prelabel(project, prelabel_options(project, model=tiny_llama))
    assert np.allclose(pq.read_table(again.path).to_pandas()[["p_neg", "p_pos"]], probs)


def test_llm_with_a_chat_template(tmp_path, tiny_llama):  # noqa: F811 - the fixture
    import shutil

    from transformers import AutoTokenizer

    from review.prelabel_llm import llm_probs

    chat = tmp_path / "chat-llama"
    shutil.copytree(tiny_llama, chat)
    tok = AutoTokenizer.from_pretrained(chat)
    tok.chat_template = "{% for m in messages %}user: {{ m['content'] }}\n{% endfor %}answer:"
    tok.save_pretrained(chat)
    probs = llm_probs(["a fine film"], ["neg", "pos"], {"neg": ["bad"], "pos": ["good"]}, str(chat))
    assert probs.shape == (1, 2) and np.isclose(probs.sum(), 1)


class _Stub(BaseHTTPRequestHandler):
    """An OpenAI-compatible server: answers ``pos`` when the text has a positive word."""

    requests: list[dict] = []
    logprobs = True

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, payload: dict, status: int = 200) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/v1/models":
            self._send({"object": "list", "data": [{"id": "stub-model", "object": "model"}]})
        else:
            self._send({"error": "not found"}, 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        if self.path != "/v1/chat/completions":
            return self._send({"error": "not found"}, 404)
        text = body["messages"][0]["content"].split("Text: ")[1].split("\n")[0]
        positive = any(w in text for w in ("wonderful", "loved", "superb", "best", "great"))
        answer, other = ("pos", "neg") if positive else ("neg", "pos")
        choice = {"index": 0, "message": {"role": "assistant", "content": answer}}
        if type(self).logprobs:
            top = [
                {"token": answer, "logprob": float(np.log(0.8))},
                {"token": " " + other, "logprob": float(np.log(0.15))},
                {"token": "The", "logprob": float(np.log(0.05))},
            ]
            choice["logprobs"] = {"content": [{**top[0], "top_logprobs": top}]}
        self._send({"id": "x", "object": "chat.completion", "model": body["model"],
                    "choices": [choice]})  # fmt: skip


@pytest.fixture
def stub_server():
    _Stub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("logprobs", [True, False])
def test_endpoint_prelabel_over_real_http(tmp_path, stub_server, logprobs):
    _Stub.logprobs = logprobs
    project = unlabelled_project(tmp_path)
    result = prelabel(project, prelabel_options(project, model=stub_server + "/v1"))
    assert result.method == "endpoint" and result.model == "endpoint:stub-model"
    assert len(_Stub.requests) == 20
    sent = _Stub.requests[0]
    assert sent["model"] == "stub-model" and sent["logprobs"] is True
    assert "a positive movie review" in sent["messages"][0]["content"]
    table = pq.read_table(result.path).to_pandas().set_index("id")
    want = 0.8 / 0.95 if logprobs else 1.0
    assert table.loc["p0", "label"] == "pos" and table.loc["p0", "score"] == pytest.approx(want)
    assert table.loc["n0", "label"] == "neg"


def test_endpoint_unreachable_is_a_user_error(tmp_path):
    project = unlabelled_project(tmp_path)
    with pytest.raises(InputError, match="cannot reach"):
        prelabel(
            project, prelabel_options(project, model="http://127.0.0.1:9/v1", endpoint_model="m")
        )


def test_choice_probs_and_base():
    assert endpoint_base("http://h:1") == "http://h:1/v1"
    assert endpoint_base("http://h:1/v1/chat/completions") == "http://h:1/v1"
    labels = ["positive", "negative", "neutral"]
    top = [{"token": "pos", "logprob": np.log(0.5)}, {"token": "ne", "logprob": np.log(0.5)}]
    resp = {"choices": [{"message": {"content": "positive"}, "logprobs": {"content": [
        {"token": "pos", "logprob": np.log(0.5), "top_logprobs": top}]}}]}  # fmt: skip
    # "ne" begins two labels: it says nothing, "pos" takes all
    assert choice_probs(resp, labels).tolist() == [1.0, 0.0, 0.0]
    plain = {"choices": [{"message": {"content": "Neutral."}}]}
    assert choice_probs(plain, labels).tolist() == [0.0, 0.0, 1.0]
    nothing = {"choices": [{"message": {"content": "no idea"}}]}
    assert np.allclose(choice_probs(nothing, labels), 1 / 3)


def test_prelabeller_agreement_overall_and_per_slice():
    pre = {"a": "x", "b": "y", "c": "x", "d": "y", "e": "x"}
    consensus = {"a": "x", "b": "x", "c": "x", "d": "y", "e": None, "f": "y"}
    slices = {"a": ["women"], "b": ["women"], "d": ["men"]}
    out = prelabeller_agreement(pre, consensus, slices, ["x", "y"])
    assert out["n"] == 4 and out["accuracy"] == 0.75  # e is a tie, f has no pre-label
    assert out["by_slice"]["women"]["n"] == 2 and out["by_slice"]["women"]["accuracy"] == 0.5
    assert out["by_slice"]["men"]["accuracy"] == 1.0
    assert label_agreement([], [], ["x"])["n"] == 0


def test_cli_prelabel_json_and_errors(tmp_path):
    project = unlabelled_project(tmp_path)
    res = CliRunner().invoke(main, ["review", "prelabel", "-p", str(project.root), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["method"] == "zero-shot" and out["records"] == 20 and out["pushed"] is None
    bare = unlabelled_project(tmp_path / "bare", descriptions=False, labels=())
    res = CliRunner().invoke(main, ["review", "prelabel", "-p", str(bare.root)])
    assert res.exit_code == 1 and "labels: [a, b]" in res.output
    res = CliRunner().invoke(
        main, ["review", "prelabel", "-p", str(project.root), "--model", "few-shot"]
    )
    assert res.exit_code == 1 and "few-shot needs 8" in res.output
    res = CliRunner().invoke(
        main,
        ["review", "prelabel", "-p", str(project.root), "--model", "setfit", "--setfit-steps", "5"],
    )
    assert res.exit_code == 1 and "setfit needs 8" in res.output
    res = CliRunner().invoke(
        main, ["review", "prelabel", "-p", str(project.root), "--setfit-steps", "0"]
    )
    assert res.exit_code == 2


def test_contrastive_pairs_alternate_same_and_different_class():
    y = np.array([0, 0, 0, 1, 1, 2])
    pairs = contrastive_pairs(y, 200, seed=1)
    i, j, same = pairs.T
    assert (same[::2] == 1).all() and (same[1::2] == 0).all()
    assert (y[i[same == 1]] == y[j[same == 1]]).all() and (i[same == 1] != j[same == 1]).all()
    assert (y[i[same == 0]] != y[j[same == 0]]).all()
    assert set(y[i[same == 0]]) == {0, 1, 2}  # every class takes part in the negatives
    assert (contrastive_pairs(y, 200, seed=1) == pairs).all()  # seeded
    with pytest.raises(InputError):
        contrastive_pairs(np.array([0, 1, 2]), 4)  # no class has two records
    with pytest.raises(InputError):
        contrastive_pairs(np.array([0, 0, 0]), 4)  # one class


def _separation(vectors: np.ndarray, y: np.ndarray) -> float:
    """Mean cosine of same-class pairs minus that of different-class pairs (higher = apart)."""
    sims = vectors @ vectors.T
    same = y[:, None] == y[None, :]
    off = ~np.eye(len(y), dtype=bool)
    return float(sims[same & off].mean() - sims[~same].mean())


@pytest.mark.slow
def test_setfit_tuning_pulls_the_classes_apart():
    texts = POS[:6] + NEG[:6]
    y = np.array([1] * 6 + [0] * 6)
    base = tune_encoder(texts, y, "default", SetFitOptions(steps=0))
    before = _separation(encode(base, texts), y)
    tuned = tune_encoder(texts, y, "default", SetFitOptions(steps=8, batch=8, lr=1e-4))
    after = _separation(encode(tuned, texts), y)
    assert after > before + 0.1, (before, after)
    # and on the reviews it never saw
    held = POS[6:] + NEG[6:]
    y_held = np.array([1] * 4 + [0] * 4)
    assert _separation(encode(tuned, held), y_held) > _separation(encode(base, held), y_held)


@pytest.mark.slow
def test_setfit_prelabel_learns_from_the_reviews(tmp_path):
    project = unlabelled_project(tmp_path, descriptions=False)
    _write_reviews(project, 8)
    result = prelabel(project, prelabel_options(project, model="setfit", setfit_steps=4))
    assert result.method == "setfit" and result.model == "setfit:all-MiniLM-L6-v2"
    assert result.agreement["how"] == "cross-validated" and result.agreement["n"] == 16
    assert result.agreement["accuracy"] >= 0.75
    table = pq.read_table(result.path).to_pandas()
    assert np.allclose(table[["p_neg", "p_pos"]].sum(axis=1), 1)
    assert ((table["score"] >= 0.5) & (table["score"] <= 1)).all()
    assert _accuracy(project) >= 0.9  # the 4 unreviewed records of each class too
