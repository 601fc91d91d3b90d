"""Export a run: the LoRA adapter (load with peft on the same base) or a merged model that plain
``transformers`` loads (``AutoModelForSequenceClassification``/``AutoModelForCausalLM``)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from thresher.errors import ThresherError

log = logging.getLogger(__name__)


def export_run(run_dir: str | Path, out: str | Path, *, merged: bool = False) -> Path:
    """Write the adapter (default) or the merged model + tokenizer + label map to ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    adapter = run_dir / "adapter"
    if not adapter.exists():
        raise ThresherError(f"{adapter} not found; is {run_dir} a finished run?")
    if out.exists() and any(out.iterdir()):
        raise ThresherError(f"{out} exists and is not empty; choose a new folder")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if not merged:
        shutil.copytree(adapter, tmp)
    else:
        from tune.predict import load_run, unload_run

        # A QLoRA run merges into the full-precision base: a plain model, no bitsandbytes needed.
        # Merging rewrites the model load_run caches, so the cache is emptied around it.
        unload_run(run_dir)
        try:
            run = load_run(run_dir, device="cpu", quantized=False)
        finally:
            unload_run(run_dir)
        model = run.model.merge_and_unload()
        model.save_pretrained(tmp)
        run.tokenizer.save_pretrained(tmp)
        shutil.copy(adapter / "label_map.json", tmp / "label_map.json")
    (tmp / "thresher_export.json").write_text(
        json.dumps({"run": run_dir.name, "merged": merged}, indent=2)
    )
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    log.info("exported %s (%s) to %s", run_dir.name, "merged" if merged else "adapter", out)
    return out
