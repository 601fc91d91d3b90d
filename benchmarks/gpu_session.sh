#!/usr/bin/env bash
# The GPU checks in one go, for a lent or rented GPU machine with torch/transformers/peft installed
# (python3 there). Writes JSON and logs under OUT (default: benchmarks/results/gpu).
#   OUT=/tmp/out bash benchmarks/gpu_session.sh [MODEL_FP16_DIR DOCS_FILE]
# 1. tune_gpu.py: recipe with CUDA graphs (compile=graphs) and with compiled blocks (compile=on)
#    vs HF Trainer + peft at 1024x8, 1024x16, 1024x32: tokens/s, MFU, peak memory, compile
#    warm-up, and a profile of 3 graphs-mode steps. Budget (one 10-minute call): graphs compile
#    once (~1-2 min, a guess) and the later configs reuse it (symbolic batch and length), only
#    recording CUDA graphs; compiled blocks ~0.5-1 min; Trainer ~0.43 s/step (out of memory at
#    1024x32 on 80 GB); 23 steps per run: ~5-7 min in all, cut at TUNE_TIMEOUT (540 s; the rows
#    finished by then are in tune_gpu.log and the partial JSON). Eager recipe: add recipe to
#    VARIANTS.
# 2. embed.py on the CPU (the machine's CPU, where bf16 units may exist): thresher vs plain encode.
#    The encoder comes from MODEL_FP16_DIR (a sentence-transformers folder whose weights were stored
#    as model.fp16.safetensors to travel light; restored to float32 here) and DOCS_FILE.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
grep -o -w -E 'amx_bf16|avx512_bf16|avx512f|avx2' /proc/cpuinfo | sort | uniq -c || true
nproc
timeout "${TUNE_TIMEOUT:-540}" $PY benchmarks/tune_gpu.py --configs ${CONFIGS:-1024x8 1024x16 1024x32} \
  --variants ${VARIANTS:-recipe_graphs recipe_compiled trainer} --steps "${STEPS:-20}" \
  --warmup "${WARMUP:-3}" --profile "$OUT/profile.txt" --profile-variant recipe_graphs \
  --out "$OUT/tune_gpu.json" >"$OUT/tune_gpu.log" 2>&1
echo "tune_gpu exit $?"
grep -v -i -E 'warn|^\s*$' "$OUT/tune_gpu.log" | grep -E '^\{"(seq_len|variant)|per step' | cut -c1-1500
grep -i -E 'skipping cudagraphs|recompil|graph break|Traceback|Error' "$OUT/tune_gpu.log" | sort | uniq -c | head -20
head -30 "$OUT/profile.txt" 2>/dev/null | cut -c1-170
# 1b. (QLORA=1) QLoRA vs bf16 LoRA, compiled blocks, same process: tokens/s and peak memory.
#     bitsandbytes is not on the lent machines and they have no internet: carry its wheel
#     (bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl, 41 MiB) and pass BNB_WHEEL=path.
#     Run it as its own call when (1) took most of the 10 minutes.
if [ "${QLORA:-0}" = 1 ]; then
  [ -n "${BNB_WHEEL:-}" ] && $PY -m pip install -q --no-deps "$BNB_WHEEL"
  timeout "${QLORA_TIMEOUT:-300}" $PY benchmarks/tune_gpu.py --configs ${QLORA_CONFIGS:-1024x8 1024x32} \
    --variants recipe_qlora_compiled recipe_compiled --steps "${STEPS:-20}" --warmup "${WARMUP:-3}" \
    --out "$OUT/tune_gpu_qlora.json" >"$OUT/tune_gpu_qlora.log" 2>&1
  echo "tune_gpu qlora exit $?"
  grep -E '^\{"variant' "$OUT/tune_gpu_qlora.log" | cut -c1-900
  grep -E 'Traceback|Error' "$OUT/tune_gpu_qlora.log" | sort | uniq -c | head -10
fi
if [ $# -ge 2 ]; then
  rm -rf /tmp/encoder && cp -r "$1" /tmp/encoder
  $PY - <<'PY'
from safetensors.torch import load_file, save_file
sd = load_file("/tmp/encoder/model.fp16.safetensors")
save_file({k: v.float() for k, v in sd.items()}, "/tmp/encoder/model.safetensors")
PY
  rm /tmp/encoder/model.fp16.safetensors
  timeout "${EMBED_TIMEOUT:-150}" $PY benchmarks/embed.py --device cpu --model /tmp/encoder \
    --docs-file "$2" --docs 200 >"$OUT/embed_cpu.json" 2>"$OUT/embed_cpu.log"
  echo "embed exit $?"; cat "$OUT/embed_cpu.json"; tail -3 "$OUT/embed_cpu.log" | cut -c1-300
fi
