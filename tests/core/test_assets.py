from pathlib import Path

from thresher.assets import DEMO_LABELS, resolve_model, write_demo_corpus


def test_default_models_resolve_to_shipped_files():
    encoder = resolve_model("default", "embedding")
    assert encoder.is_local and (Path(encoder.path) / "config.json").exists()
    assert resolve_model(None, "classifier").path == encoder.path
    sft = resolve_model("default", "sft")
    assert sft.gguf_file and (Path(sft.path) / sft.gguf_file).exists()


def test_local_paths_and_hub_ids_pass_through(tmp_path):
    local = resolve_model(str(tmp_path), "classifier")
    assert local.is_local and local.path == str(tmp_path.resolve())
    hub = resolve_model("sentence-transformers/all-MiniLM-L6-v2", "embedding")
    assert not hub.is_local and hub.path == "sentence-transformers/all-MiniLM-L6-v2"


def test_demo_corpus_has_reviews_only(tmp_path):
    import csv

    path = write_demo_corpus(tmp_path / "demo.csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) > 12_000
    assert {r["label"] for r in rows} == set(DEMO_LABELS)
    assert all(r["text"].strip() for r in rows)
