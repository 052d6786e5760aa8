#!/usr/bin/env bash
# Side-by-side: llama.cpp's llama-server and gptserve on the same GGUF, measured with the same
# clients/bench.py arguments. Both servers are started first and stay up; each concurrency level
# is then run against one and at once against the other (which goes first alternates by level),
# so that load from other work on the machine falls on both alike. Results:
# bench-results/<stamp>/{llama-server,gptserve}.{json,txt,log}, info.txt and a PNG.
#
#   scripts/compare_llama_server.sh                                   # 1,4,16,64; 48 words; 128 tokens
#   scripts/compare_llama_server.sh --concurrency 1,4 --output-tokens 64 --num-prompts 8
#   NUM_PROMPTS=8,32,64 scripts/compare_llama_server.sh --concurrency 1,16,64 --model shaped.Q4_K_M.gguf
#
# --model PATH: the GGUF both serve (default: gptserve's built-in SmolLM2-135M-Instruct GGUF); it
# is not passed on (bench.py's --model is the API's model name; each server's own is used).
# Every other argument goes to clients/bench.py for both servers (`python -m clients.bench --help`);
# --concurrency, --prompt-words and --output-tokens also size llama-server's slots and context.
# info.txt gets the commands, the load average before and after each run, and each server's
# VmRSS/VmHWM (/proc/PID/status) after load and after the sweep.
# Env: THREADS (llama-server -t, default 2), OUT_DIR, PLOT (PNG path), ONLY (llama-server|gptserve),
#      GPTSERVE_ARGS / LLAMA_ARGS (extra server flags), LLAMA_SERVER (a prebuilt binary),
#      NUM_PROMPTS (requests per level, comma-separated in the order of --concurrency; default
#      bench.py's max(4·c, 8)), GGUF (the same as --model).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
THREADS="${THREADS:-2}"

CONCURRENCY="1,4,16,64"
PROMPT_WORDS=48
OUTPUT_TOKENS=128
GGUF="${GGUF:-}"
# Arguments for bench.py, less --model (the file, for the servers) and --concurrency (given to
# bench.py one level at a time).
args=()
while (($#)); do
    case "$1" in
        --model) GGUF="$2"; shift 2 ;;
        --model=*) GGUF="${1#*=}"; shift ;;
        --concurrency) CONCURRENCY="$2"; shift 2 ;;
        --concurrency=*) CONCURRENCY="${1#*=}"; shift ;;
        --base-url* | --label* | --json-out*)
            echo "compare_llama_server.sh sets ${1%%=*} itself" >&2; exit 2 ;;
        --request-rate*)
            echo "compare_llama_server.sh sweeps --concurrency levels, not rates" >&2; exit 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --prompt-words) PROMPT_WORDS="${args[$((i + 1))]}" ;;
        --prompt-words=*) PROMPT_WORDS="${args[$i]#*=}" ;;
        --output-tokens) OUTPUT_TOKENS="${args[$((i + 1))]}" ;;
        --output-tokens=*) OUTPUT_TOKENS="${args[$i]#*=}" ;;
        --num-prompts*) [[ -z "${NUM_PROMPTS:-}" ]] || { echo "give NUM_PROMPTS or --num-prompts, not both" >&2; exit 2; } ;;
    esac
done
IFS=, read -r -a LEVELS <<<"$CONCURRENCY"
IFS=, read -r -a PROMPTS <<<"${NUM_PROMPTS:-}"
if [[ -n "${NUM_PROMPTS:-}" && ${#PROMPTS[@]} -ne ${#LEVELS[@]} ]]; then
    echo "NUM_PROMPTS needs one count per concurrency level ($CONCURRENCY)" >&2; exit 2
fi

MAX_CONC=$(tr ',' '\n' <<<"$CONCURRENCY" | sort -n | tail -n1)
# Each slot holds a prompt (about a token a word, plus a chat template) and the output, with room.
PER_SLOT=$(( PROMPT_WORDS * 2 + OUTPUT_TOKENS + 64 ))
CTX=$(( MAX_CONC * PER_SLOT ))

GPTSERVE_MODEL=()
if [[ -n "$GGUF" ]]; then
    [[ -f "$GGUF" ]] || { echo "no such model file: $GGUF" >&2; exit 2; }
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
    for _ in $(seq 1800); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "server exited before it was ready; log:" >&2; tail -n 40 "$log" >&2; return 1
        fi
        curl -sf --noproxy '*' "$url" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "server not ready after 900 s: $url" >&2; tail -n 40 "$log" >&2; return 1
}

elapsed() {  # start ($EPOCHREALTIME): seconds since, to a tenth
    awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'
}

mem() {  # pid: "VmRSS ... kB VmHWM ... kB" of a running process
    grep -E '^(VmRSS|VmHWM):' "/proc/$1/status" | tr -s ' \t' ' ' | paste -sd' '
}

bench() {  # label port level-index: one concurrency level, appended to the label's .txt and parts
    local c="${LEVELS[$3]}" n=()
    [[ -z "${NUM_PROMPTS:-}" ]] || n=(--num-prompts "${PROMPTS[$3]}")
    echo "load before $1 c=$c: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT_DIR/info.txt"
    "$PY" -m clients.bench --base-url "http://127.0.0.1:$2/v1" --label "$1" \
        --json-out "$OUT_DIR/parts/$1.c$c.json" --save-requests --concurrency "$c" "${n[@]+"${n[@]}"}" \
        "${args[@]+"${args[@]}"}" | tee -a "$OUT_DIR/$1.txt"
    echo "load after $1 c=$c: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT_DIR/info.txt"
}

merge() {  # label: the levels' JSONs -> one bench.py report, in the order run
    local parts=()
    for c in "${LEVELS[@]}"; do parts+=("$OUT_DIR/parts/$1.c$c.json"); done
    "$PY" - "$OUT_DIR/$1.json" "${parts[@]}" <<'PYEOF'
import json, sys
reports = [json.load(open(path)) for path in sys.argv[2:]]
merged = reports[0]
merged["results"] = [level for report in reports for level in report["results"]]
merged["config"]["concurrency"] = [c for report in reports for c in report["config"]["concurrency"]]
json.dump(merged, open(sys.argv[1], "w"), indent=2)
PYEOF
}

{
    echo "date: $STAMP"
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "gguf: $GGUF"
    echo "concurrency: $CONCURRENCY; requests per level: ${NUM_PROMPTS:-max(4c, 8), as bench.py}"
    echo "bench args: ${args[*]-}"
    echo "gptserve commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
} > "$OUT_DIR/info.txt"

mkdir -p "$OUT_DIR/parts"
SERVERS=()
declare -A PORT_OF PID_OF
if [[ "${ONLY:-}" != "gptserve" ]]; then
    LLAMA_SERVER="${LLAMA_SERVER:-$("$ROOT/scripts/build_llama_server.sh" | tail -n1)}"
    PORT=$(free_port)
    LOG="$OUT_DIR/llama-server.log"
    # shellcheck disable=SC2086
    CMD=("$LLAMA_SERVER" -m "$GGUF" --host 127.0.0.1 --port "$PORT" -t "$THREADS" -tb "$THREADS"
         -np "$MAX_CONC" -c "$CTX" -cb --no-webui ${LLAMA_ARGS:-})
    echo "llama-server: ${CMD[*]}" | tee -a "$OUT_DIR/info.txt"
    start=$EPOCHREALTIME
    "${CMD[@]}" >"$LOG" 2>&1 &
    PIDS+=($!)
    wait_ready "http://127.0.0.1:$PORT/health" "$!" "$LOG"
    echo "llama-server ready after $(elapsed "$start") s; after load: $(mem "$!")" | tee -a "$OUT_DIR/info.txt"
    SERVERS+=(llama-server); PORT_OF[llama-server]=$PORT; PID_OF[llama-server]=$!
fi

if [[ "${ONLY:-}" != "llama-server" ]]; then
    PORT=$(free_port)
    LOG="$OUT_DIR/gptserve.log"
    # shellcheck disable=SC2086
    CMD=("$PY" -m server serve --host 127.0.0.1 --port "$PORT" "${GPTSERVE_MODEL[@]}" --log-level warning ${GPTSERVE_ARGS:-})
    echo "gptserve: ${CMD[*]}" | tee -a "$OUT_DIR/info.txt"
    start=$EPOCHREALTIME
    "${CMD[@]}" >"$LOG" 2>&1 &
    PIDS+=($!)
    wait_ready "http://127.0.0.1:$PORT/ready" "$!" "$LOG"
    echo "gptserve ready after $(elapsed "$start") s; after load: $(mem "$!")" | tee -a "$OUT_DIR/info.txt"
    SERVERS+=(gptserve); PORT_OF[gptserve]=$PORT; PID_OF[gptserve]=$!
fi

for i in "${!LEVELS[@]}"; do
    order=("${SERVERS[@]}")
    if ((i % 2 == 1 && ${#order[@]} == 2)); then order=("${order[1]}" "${order[0]}"); fi
    for name in "${order[@]}"; do bench "$name" "${PORT_OF[$name]}" "$i"; done
done

RESULTS=()
for name in "${SERVERS[@]}"; do
    echo "$name after the sweep: $(mem "${PID_OF[$name]}")" | tee -a "$OUT_DIR/info.txt"
    merge "$name"
    RESULTS+=("$OUT_DIR/$name.json")
done
cleanup

if "$PY" -c "import matplotlib" 2>/dev/null; then
    "$PY" "$ROOT/scripts/plot_bench.py" "${RESULTS[@]}" -o "$PLOT"
else
    echo "matplotlib not installed: no plot (.venv/bin/pip install matplotlib)" >&2
fi
echo "results in $OUT_DIR"
