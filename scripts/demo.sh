#!/usr/bin/env bash
# The whole thresher loop on the built-in corpus, on CPU (make demo runs this with the venv's
# bin first on PATH).
#
#   ingest (sample) → dedup → score → Argilla server up → push → two SIMULATED annotators label
#   through the real server with their own accounts → pull with agreement → tune train (few
#   steps) → tune eval against the baseline → thresher round (round 2 pushed) → tune select (two
#   bases) → promote → serve a burst of SIMULATED production traffic (a quarter from another
#   domain) → monitor (drift) → round from traffic (production records to annotators) → report
#
# Knobs (environment): DEMO (project folder, demo-project), DEMO_SIZE (records sampled from the
# 12.8k-record corpus, 1500), DEMO_PUSH (records pushed first, 200), DEMO_ROUND_SIZE (records the
# round selects, 50), DEMO_MAX_STEPS (LoRA optimizer steps, 120), DEMO_LEARNER (round learner:
# fast | tfidf | lora, fast), DEMO_DISAGREEMENT (annotator flip rate, 0.15), DEMO_SELECT_STEPS
# (steps per base in tune select, 30), DEMO_TRAFFIC (texts sent to the server, 400),
# DEMO_SHIFT (share of them from another domain, 0.25).
# DEMO_UNLABELLED=1 takes the other path, from text with no labels, in ${DEMO}-unlabelled/:
#   ingest the sample with its labels removed (the label set and one line per label in
#   thresher.yaml) → dedup → score (label noise skipped) → review prelabel --push (zero-shot
#   suggestions in Argilla) → a cold-start round (coverage picks, no model yet) → the SIMULATED
#   annotators label its picks → pull (the pre-labeller's agreement with them) → prelabel again,
#   now learning from the reviewed labels. About 3-5 minutes on 2 cores.
# Rerunning it is cheap: every stage is a no-op when its inputs did not change.
set -euo pipefail

DEMO=${DEMO:-demo-project}
SIZE=${DEMO_SIZE:-1500}
PUSH=${DEMO_PUSH:-200}
ROUND_SIZE=${DEMO_ROUND_SIZE:-50}
MAX_STEPS=${DEMO_MAX_STEPS:-120}
LEARNER=${DEMO_LEARNER:-fast}
DISAGREEMENT=${DEMO_DISAGREEMENT:-0.15}
SELECT_STEPS=${DEMO_SELECT_STEPS:-30}
TRAFFIC=${DEMO_TRAFFIC:-400}
SHIFT=${DEMO_SHIFT:-0.25}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

T0=$(date +%s)
stage() { echo; echo "== [$(($(date +%s) - T0)) s] $*"; }

# The path from unlabelled text (DEMO_UNLABELLED=1); the labelled path below is unchanged.
unlabelled_demo() {
  local dir="${DEMO}-unlabelled"
  stage "1/9 ingest a ${SIZE}-record sample of the built-in corpus WITHOUT its labels into ${dir}/"
  [ -f "$dir/thresher.yaml" ] || thresher init "$dir"
  # The label set and what each label means: all thresher knows before anyone labels.
  sed -i -e 's/^labels: \[\]$/labels: [fresh, rotten]/' \
    -e 's/^label_descriptions: null$/label_descriptions:\
  fresh: ["a positive movie review", "the critic liked the film"]\
  rotten: ["a negative movie review", "the critic disliked the film"]/' "$dir/thresher.yaml"
  python - "$dir" "$SIZE" <<'PY'
import sys
from pathlib import Path

import pandas as pd

from thresher.assets import write_demo_corpus

root, size = Path(sys.argv[1]), int(sys.argv[2])
out = root / "demo" / f"unlabelled-{size}.csv"
gold = root / "demo" / f"gold-{size}.csv"  # for the simulated annotators only
if not out.exists():
    full = pd.read_csv(write_demo_corpus(root / "demo" / "rotten_tomatoes.csv"))
    sample = full.sample(n=min(size, len(full)), random_state=0)
    sample.insert(0, "id", [f"rt-{i}" for i in sample.index])
    sample[["id", "label"]].to_csv(gold, index=False)
    sample.drop(columns="label").to_csv(out, index=False)
print(f"   sample (no labels): {out}; gold labels for the simulated annotators: {gold}")
PY
  thresher curate ingest "$dir/demo/unlabelled-${SIZE}.csv" -p "$dir"

  stage "2/9 near-duplicates"
  thresher curate dedup -p "$dir"

  stage "3/9 outliers, near-OOD, bias (label noise needs labels: skipped)"
  thresher curate score -p "$dir"

  stage "4/9 the embedded Argilla server"
  thresher review server up -p "$dir"

  stage "5/9 zero-shot pre-labels from the label descriptions, pushed as suggestions"
  thresher review prelabel -p "$dir" --model zero-shot --push

  stage "6/9 cold-start round: no model yet, so the round picks ${ROUND_SIZE} records that cover the corpus"
  thresher round -p "$dir" --size "$ROUND_SIZE" --learner "$LEARNER"
  local last picked  # the round number its records carry in Argilla (the next round's)
  last=$(ls "$dir/rounds" | grep -E '^[0-9]+$' | sort -n | tail -n1)
  picked=$(python -c 'import json,sys; m = json.load(open(sys.argv[1]))
print(m["steps"]["push"]["outputs"]["round"])' "$dir/rounds/$last/manifest.json")

  stage "7/9 two SIMULATED annotators label the round's records"
  python -m loop.demo_annotators -p "$dir" --annotators 2 --disagreement "$DISAGREEMENT" \
    --gold "$dir/demo/gold-${SIZE}.csv" --round "$picked"

  stage "8/9 pull: consensus, agreement, and the pre-labeller measured against the annotators"
  thresher review pull -p "$dir"
  python - "$dir/review/agreement.json" <<'PY'
import json
import sys

pl = json.load(open(sys.argv[1])).get("prelabeller")
if pl:
    model = ", ".join(pl["model"]) if isinstance(pl["model"], list) else pl["model"]
    print(f"pre-labeller {model} against the annotators' consensus on {pl['n']} records: "
          f"accuracy {pl['accuracy']}, macro-F1 {pl['macro_f1']}, kappa {pl['kappa']}")
PY

  stage "9/9 pre-label again: with reviewed labels, auto learns from them and measures itself"
  thresher review prelabel -p "$dir" --no-push

  echo
  echo "== done in $(($(date +%s) - T0)) s"
  thresher review server status
  echo "open the Argilla UI at the URL above; dataset '$(basename "$(cd "$dir" && pwd)")': every"
  echo "  record carries its pre-label as a suggestion with a score; filter 'round' = $picked for"
  echo "  the records the cold-start round picked to cover the corpus"
  echo "pre-labels: $dir/review/prelabels.parquet; agreement: $dir/review/agreement.json"
  echo "score report (noise skipped): $dir/score/report.html; round: $dir/rounds/*/manifest.json"
  echo "next: \`thresher round -p $dir\` trains on these labels and picks by uncertainty"
  echo "stop the server: thresher review server down"
}

if [ -n "${DEMO_UNLABELLED:-}" ] && [ "${DEMO_UNLABELLED}" != 0 ]; then
  unlabelled_demo
  exit 0
fi

stage "1/15 ingest a ${SIZE}-record sample of the built-in Rotten Tomatoes corpus into ${DEMO}/"
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

stage "2/15 near-duplicates"
thresher curate dedup -p "$DEMO"

stage "3/15 label noise, outliers, bias"
thresher curate score -p "$DEMO"

stage "4/15 the embedded Argilla server (first run installs its virtualenv, about a minute)"
thresher review server up -p "$DEMO"

stage "5/15 push the ${PUSH} most urgent records for review"
thresher review push -p "$DEMO" --limit "$PUSH"

stage "6/15 two SIMULATED annotators (demo tool) label through their own accounts"
python -m loop.demo_annotators -p "$DEMO" --annotators 2 --disagreement "$DISAGREEMENT"

stage "7/15 pull: consensus, agreement, reviewed labels"
thresher review pull -p "$DEMO"

stage "8/15 LoRA training (${MAX_STEPS} steps on CPU) and evaluation against the baseline"
thresher tune train -p "$DEMO" --max-steps "$MAX_STEPS" --run demo
thresher tune eval -p "$DEMO" --run demo --against baseline

stage "9/15 active-learning round 1: train on the reviewed labels, push round 2"
thresher round -p "$DEMO" --strategy margin+kmeans --size "$ROUND_SIZE" --learner "$LEARNER"

stage "10/15 choose the base model: tune select over the packaged MiniLM and SmolLM2-135M"
thresher tune select -p "$DEMO" --bases minilm,smollm2-135m --max-steps "$SELECT_STEPS"
CHOSEN=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["chosen"])' \
  "$DEMO/tune/selection/selection.json")

stage "11/15 promote: run 'demo' is the production model; the chosen base is tested against it"
thresher tune promote -p "$DEMO" --run demo
thresher tune eval -p "$DEMO" --run "$CHOSEN" --against production
thresher tune promote -p "$DEMO" --run "$CHOSEN" \
  || echo "   (kept 'demo' in production: promote refuses a significantly worse run)"

stage "12/15 serve the production model and send it ${TRAFFIC} SIMULATED production texts"
SERVE_LOG="$DEMO/serve/demo-serve.log"
mkdir -p "$DEMO/serve"
thresher serve -p "$DEMO" --run production --port 0 > "$SERVE_LOG" 2>&1 &
SERVE_PID=$!
trap 'kill -TERM $SERVE_PID 2>/dev/null || true' EXIT
URL=""
for _ in $(seq 1 240); do
  URL=$(sed -n 's/^serving .* on \(http[^ ]*\) .*/\1/p' "$SERVE_LOG" | head -n1)
  [ -n "$URL" ] && break
  kill -0 "$SERVE_PID" 2>/dev/null || { cat "$SERVE_LOG"; exit 1; }
  sleep 0.5
done
[ -n "$URL" ] || { echo "serve did not start"; cat "$SERVE_LOG"; exit 1; }
head -n1 "$SERVE_LOG"
python -m loop.demo_traffic -p "$DEMO" --url "$URL" --n "$TRAFFIC" --shift "$SHIFT"
curl -s "$URL/metrics" | grep -E '^thresher_serve_(texts_total|batch_size_(count|sum))' || true
kill -TERM "$SERVE_PID"
wait "$SERVE_PID"
trap - EXIT
echo "   server drained and stopped; traffic log: $DEMO/serve/traffic/"

stage "13/15 monitor: has production traffic drifted from the training data? (exit 3 = drift)"
MONITOR_EXIT=0
thresher monitor -p "$DEMO" || MONITOR_EXIT=$?
[ "$MONITOR_EXIT" -eq 0 ] || [ "$MONITOR_EXIT" -eq 3 ] || exit "$MONITOR_EXIT"

stage "14/15 production records back to annotators (round from traffic)"
thresher round -p "$DEMO" --from-traffic --size "$ROUND_SIZE"

stage "15/15 report"
thresher curate report -p "$DEMO"

echo
echo "== done in $(($(date +%s) - T0)) s"
thresher review server status
HOME_DIR=${THRESHER_HOME:-$HOME/.cache/thresher}
echo "annotator logins (simulated): $HOME_DIR/argilla/users/demo-annotator-1.json, demo-annotator-2.json"
echo "open the Argilla UI at the URL above; dataset '$(basename "$(cd "$DEMO" && pwd)")', sort by"
echo "  metadata 'priority', filter 'round' = 2 for the records this round picked (reason: why)"
echo "report: $DEMO/score/report.html (open it in a browser)"
echo "base selection: $DEMO/tune/selection/report.html; production model: $DEMO/tune/registry.json"
echo "drift report: $(ls -td "$DEMO"/monitor/*/ | head -n1)report.html (monitor exit $MONITOR_EXIT)"
echo "round manifests: $DEMO/rounds/*/manifest.json"
echo "next: annotate round 2 in the UI, then \`thresher round -p $DEMO\` runs round 2"
echo "stop the server: thresher review server down"
