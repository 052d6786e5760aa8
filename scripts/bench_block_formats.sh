#!/usr/bin/env bash
# gptserve's default (a GGUF file's own block formats on the CPU) against `--dtype float32` (every
# weight dequantized, the old default), one server at a time, in one run: resident memory after
# load (VmRSS, and VmHWM: the peak during load included) next to the file's size, then output
# tokens/s from clients/bench.py.
#
#   scripts/bench_block_formats.sh                      # concurrency 1,16; 48 words; 64 tokens
#   scripts/bench_block_formats.sh --num-prompts 8      # extra arguments go to clients/bench.py
#
# Env: PYTHON (default .venv/bin/python), GGUF (default: the built-in SmolLM2 file), OUT_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
GGUF="${GGUF:-$("$PY" -c 'from engine.loader import default_model_path; print(default_model_path())')}"
OUT_DIR="${OUT_DIR:-$ROOT/bench-results/block-formats-$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT_DIR"
echo "file: $GGUF ($(stat -c %s "$GGUF") bytes)"

status() { grep -E "^$2:" "/proc/$1/status" | awk '{print $2 / 1024 " MB"}'; }

for variant in default float32; do
    args=(--model "$GGUF" --host 127.0.0.1 --port 8765 --log-level warning --kv-cache-memory-gb 0.2)
    [[ $variant == float32 ]] && args+=(--dtype float32)
    "$PY" -m server serve "${args[@]}" >"$OUT_DIR/$variant.log" 2>&1 &
    pid=$!
    trap 'kill $pid 2>/dev/null || true' EXIT
    for _ in $(seq 600); do
        curl -sf http://127.0.0.1:8765/ready >/dev/null && break
        kill -0 $pid 2>/dev/null || { cat "$OUT_DIR/$variant.log"; exit 1; }
        sleep 0.5
    done
    echo "$variant: after load VmRSS $(status $pid VmRSS), VmHWM $(status $pid VmHWM) (KV pool: 0.2 GB)"
    "$PY" -m clients.bench --base-url http://127.0.0.1:8765/v1 --label "$variant" --concurrency 1,16 \
        --output-tokens 64 --json-out "$OUT_DIR/$variant.json" "$@" | tail -n 6
    echo "$variant: after the run VmRSS $(status $pid VmRSS), VmHWM $(status $pid VmHWM)"
    kill $pid
    wait $pid 2>/dev/null || true
done
