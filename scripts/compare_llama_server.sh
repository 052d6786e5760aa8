#!/usr/bin/env bash
# Side-by-side: llama.cpp's llama-server and gptserve on the same SmolLM2 GGUF, measured with the
# same clients/bench.py arguments, one server at a time (each is started, benchmarked and stopped
# before the other starts). Results: bench-results/<stamp>/{llama-server,gptserve}.json and a PNG.
#
#   scripts/compare_llama_server.sh                                   # 1,4,16,64; 48 words; 128 tokens
#   scripts/compare_llama_server.sh --concurrency 1,4 --output-tokens 64 --num-prompts 8
#
# Every argument goes to clients/bench.py for both servers (see `python -m clients.bench --help`);
# --concurrency, --prompt-words and --output-tokens also size llama-server's slots and context.
# Env: THREADS (llama-server -t, default 2), OUT_DIR, PLOT (PNG path), ONLY (llama-server|gptserve),
#      GPTSERVE_ARGS / LLAMA_ARGS (extra server flags), LLAMA_SERVER (a prebuilt binary),
#      GGUF (model file; default: gptserve's built-in SmolLM2-135M-Instruct GGUF).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
THREADS="${THREADS:-2}"

CONCURRENCY="1,4,16,64"
PROMPT_WORDS=48
OUTPUT_TOKENS=128
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --concurrency) CONCURRENCY="${args[$((i + 1))]}" ;;
        --concurrency=*) CONCURRENCY="${args[$i]#*=}" ;;
        --prompt-words) PROMPT_WORDS="${args[$((i + 1))]}" ;;
        --prompt-words=*) PROMPT_WORDS="${args[$i]#*=}" ;;
        --output-tokens) OUTPUT_TOKENS="${args[$((i + 1))]}" ;;
        --output-tokens=*) OUTPUT_TOKENS="${args[$i]#*=}" ;;
        --base-url* | --label* | --json-out*)
            echo "compare_llama_server.sh sets ${args[$i]%%=*} itself" >&2; exit 2 ;;
    esac
done
case " ${args[*]-} " in *" --concurrency"*) ;; *) args+=(--concurrency "$CONCURRENCY") ;; esac

MAX_CONC=$(tr ',' '\n' <<<"$CONCURRENCY" | sort -n | tail -n1)
# Each slot holds a prompt (about a token a word, plus a chat template) and the output, with room.
PER_SLOT=$(( PROMPT_WORDS * 2 + OUTPUT_TOKENS + 64 ))
CTX=$(( MAX_CONC * PER_SLOT ))

GPTSERVE_MODEL=()
if [[ -n "${GGUF:-}" ]]; then
    GPTSERVE_MODEL=(--model "$GGUF")
else
    GGUF="$("$PY" -c "from engine import default_model_path; print(default_model_path())")"
fi
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT_DIR="${OUT_DIR:-$ROOT/bench-results/$STAMP}"
PLOT="${PLOT:-$OUT_DIR/compare.png}"
mkdir -p "$OUT_DIR"

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

PIDS=()
cleanup() {
    for pid in "${PIDS[@]-}"; do
        [[ -n "$pid" ]] || continue
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_ready() {  # url pid log
    local url="$1" pid="$2" log="$3"
    for _ in $(seq 600); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "server exited before it was ready; log:" >&2; tail -n 40 "$log" >&2; return 1
        fi
        curl -sf --noproxy '*' "$url" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "server not ready after 300 s: $url" >&2; tail -n 40 "$log" >&2; return 1
}

stop() {  # pid
    kill "$1" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$1" 2>/dev/null || true
}

bench() {  # label port
    echo "load before $1: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT_DIR/info.txt"
    "$PY" -m clients.bench --base-url "http://127.0.0.1:$2/v1" --label "$1" \
        --json-out "$OUT_DIR/$1.json" --save-requests "${args[@]}" | tee "$OUT_DIR/$1.txt"
    echo "load after $1: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT_DIR/info.txt"
}

{
    echo "date: $STAMP"
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "gguf: $GGUF"
    echo "bench args: ${args[*]}"
    echo "gptserve commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
} > "$OUT_DIR/info.txt"

RESULTS=()
if [[ "${ONLY:-}" != "gptserve" ]]; then
    LLAMA_SERVER="${LLAMA_SERVER:-$("$ROOT/scripts/build_llama_server.sh" | tail -n1)}"
    PORT=$(free_port)
    LOG="$OUT_DIR/llama-server.log"
    # shellcheck disable=SC2086
    CMD=("$LLAMA_SERVER" -m "$GGUF" --host 127.0.0.1 --port "$PORT" -t "$THREADS" -tb "$THREADS"
         -np "$MAX_CONC" -c "$CTX" -cb --no-webui ${LLAMA_ARGS:-})
    echo "llama-server: ${CMD[*]}" | tee -a "$OUT_DIR/info.txt"
    "${CMD[@]}" >"$LOG" 2>&1 &
    PIDS+=($!)
    wait_ready "http://127.0.0.1:$PORT/health" "$!" "$LOG"
    bench llama-server "$PORT"
    stop "${PIDS[-1]}"
    RESULTS+=("$OUT_DIR/llama-server.json")
fi

if [[ "${ONLY:-}" != "llama-server" ]]; then
    PORT=$(free_port)
    LOG="$OUT_DIR/gptserve.log"
    # shellcheck disable=SC2086
    CMD=("$PY" -m server serve --host 127.0.0.1 --port "$PORT" "${GPTSERVE_MODEL[@]}" --log-level warning ${GPTSERVE_ARGS:-})
    echo "gptserve: ${CMD[*]}" | tee -a "$OUT_DIR/info.txt"
    "${CMD[@]}" >"$LOG" 2>&1 &
    PIDS+=($!)
    wait_ready "http://127.0.0.1:$PORT/ready" "$!" "$LOG"
    bench gptserve "$PORT"
    stop "${PIDS[-1]}"
    RESULTS+=("$OUT_DIR/gptserve.json")
fi

if "$PY" -c "import matplotlib" 2>/dev/null; then
    "$PY" "$ROOT/scripts/plot_bench.py" "${RESULTS[@]}" -o "$PLOT"
else
    echo "matplotlib not installed: no plot (.venv/bin/pip install matplotlib)" >&2
fi
echo "results in $OUT_DIR"
