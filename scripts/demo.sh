#!/usr/bin/env bash
# The whole thresher loop on the built-in corpus, on CPU (make demo runs this with the venv's
# bin first on PATH).
#
#   ingest (sample) → dedup → score → Argilla server up → push → two SIMULATED annotators label
#   through the real server with their own accounts → pull with agreement → tune train (few
#   steps) → tune eval against the baseline → thresher round (round 2 pushed) → report
#
# Knobs (environment): DEMO (project folder, demo-project), DEMO_SIZE (records sampled from the
# 12.8k-record corpus, 1500), DEMO_PUSH (records pushed first, 200), DEMO_ROUND_SIZE (records the
# round selects, 50), DEMO_MAX_STEPS (LoRA optimizer steps, 120), DEMO_LEARNER (round learner:
# fast | tfidf | lora, fast), DEMO_DISAGREEMENT (annotator flip rate, 0.15).
# Rerunning it is cheap: every stage is a no-op when its inputs did not change.
set -euo pipefail

DEMO=${DEMO:-demo-project}
SIZE=${DEMO_SIZE:-1500}
PUSH=${DEMO_PUSH:-200}
ROUND_SIZE=${DEMO_ROUND_SIZE:-50}
MAX_STEPS=${DEMO_MAX_STEPS:-120}
LEARNER=${DEMO_LEARNER:-fast}
DISAGREEMENT=${DEMO_DISAGREEMENT:-0.15}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

T0=$(date +%s)
stage() { echo; echo "== [$(($(date +%s) - T0)) s] $*"; }

stage "1/10 ingest a ${SIZE}-record sample of the built-in Rotten Tomatoes corpus into ${DEMO}/"
[ -f "$DEMO/thresher.yaml" ] || thresher init "$DEMO"
python - "$DEMO" "$SIZE" <<'PY'
import sys
from pathlib import Path

import pandas as pd

from thresher.assets import write_demo_corpus

root, size = Path(sys.argv[1]), int(sys.argv[2])
out = root / "demo" / f"sample-{size}.csv"
if not out.exists():
    full = pd.read_csv(write_demo_corpus(root / "demo" / "rotten_tomatoes.csv"))
    sample = full.sample(n=min(size, len(full)), random_state=0)
    sample.to_csv(out, index=False)
print(f"   sample: {out}")
PY
thresher curate ingest "$DEMO/demo/sample-${SIZE}.csv" -p "$DEMO"

stage "2/10 near-duplicates"
thresher curate dedup -p "$DEMO"

stage "3/10 label noise, outliers, bias"
thresher curate score -p "$DEMO"

stage "4/10 the embedded Argilla server (first run installs its virtualenv, about a minute)"
thresher review server up -p "$DEMO"

stage "5/10 push the ${PUSH} most urgent records for review"
thresher review push -p "$DEMO" --limit "$PUSH"

stage "6/10 two SIMULATED annotators (demo tool) label through their own accounts"
python -m loop.demo_annotators -p "$DEMO" --annotators 2 --disagreement "$DISAGREEMENT"

stage "7/10 pull: consensus, agreement, reviewed labels"
thresher review pull -p "$DEMO"

stage "8/10 LoRA training (${MAX_STEPS} steps on CPU) and evaluation against the baseline"
thresher tune train -p "$DEMO" --max-steps "$MAX_STEPS" --run demo
thresher tune eval -p "$DEMO" --run demo --against baseline

stage "9/10 active-learning round 1: train on the reviewed labels, push round 2"
thresher round -p "$DEMO" --strategy margin+kmeans --size "$ROUND_SIZE" --learner "$LEARNER"

stage "10/10 report"
thresher curate report -p "$DEMO"

echo
echo "== done in $(($(date +%s) - T0)) s"
thresher review server status
HOME_DIR=${THRESHER_HOME:-$HOME/.cache/thresher}
echo "annotator logins (simulated): $HOME_DIR/argilla/users/demo-annotator-1.json, demo-annotator-2.json"
echo "open the Argilla UI at the URL above; dataset '$(basename "$(cd "$DEMO" && pwd)")', sort by"
echo "  metadata 'priority', filter 'round' = 2 for the records this round picked (reason: why)"
echo "report: $DEMO/score/report.html (open it in a browser)"
echo "round manifest: $DEMO/rounds/1/manifest.json"
echo "next: annotate round 2 in the UI, then \`thresher round -p $DEMO\` runs round 2"
echo "stop the server: thresher review server down"
