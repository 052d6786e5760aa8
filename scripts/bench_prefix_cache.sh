#!/usr/bin/env bash
# Does a chat's later turn reuse the prefix cache? gptserve is started twice on
# the same model, once as it ships (prefix cache on) and once with --no-prefix-caching, each on a
# free loopback port and stopped before the next starts; the same multi-turn clients/bench.py run
# goes against each. Writes bench-results/prefix-cache-<stamp>/{cache-on,cache-off}.{json,txt,log},
# info.txt (machine, commands, load average before/after each run), summary.txt, whose last
# line is the turn-N TTFT ratio (cache on / cache off; the target is under 0.5 for turn 5), and
# ttft_per_turn.png (TTFT p50 per turn, on and off; needs matplotlib).
#
#   scripts/bench_prefix_cache.sh                                  # 4 chats x 5 turns, concurrency 1
#   scripts/bench_prefix_cache.sh --concurrency 1,2 --num-prompts 4 --output-tokens 32
#   scripts/bench_prefix_cache.sh --summarize DIR                  # summary and plot of an earlier run
#
# Defaults (each can be overridden by passing it): --multi-turn 5 --system-prompt-words 200
# --prompt-words 48 --output-tokens 32 --concurrency 1 --num-prompts 4. Every argument goes to
# clients/bench.py for both runs. Env: OUT_DIR, GPTSERVE_ARGS (extra server flags for both),
# GGUF (model file; default: the built-in SmolLM2-135M-Instruct), ORDER ("on off" or "off on").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"

summarize() {  # dir
"$PY" - "$1" <<'EOF' | tee "$1/summary.txt"
import json, os, sys
out_dir = sys.argv[1]
on, off = (json.load(open(os.path.join(out_dir, f"cache-{m}.json"))) for m in ("on", "off"))
turns = on["config"]["multi_turn"]
lines = []
for a, b in zip(on["results"], off["results"]):
    for t_on, t_off in zip(a["per_turn"], b["per_turn"]):
        p_on, p_off = t_on["ttft_ms"]["p50"], t_off["ttft_ms"]["p50"]
        ratio = p_on / p_off if p_on and p_off else None
        lines.append((a["concurrency"], t_on["turn"], t_on["prompt_tokens_mean"], t_on["cached_tokens_mean"],
                      t_off["cached_tokens_mean"], p_on, p_off, ratio))
print("conc turn prompt_tok cached_on cached_off ttft_p50_on_ms ttft_p50_off_ms on/off")
fmt = lambda v, nd=1: "-" if v is None else f"{v:.{nd}f}"
for c, t, pt, con, coff, p_on, p_off, r in lines:
    print(f"{c:>4} {t:>4} {fmt(pt):>10} {fmt(con):>9} {fmt(coff):>10} {fmt(p_on):>14} {fmt(p_off):>15} {fmt(r, 3):>6}")
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for conc in sorted({row[0] for row in lines}):
        rows = [row for row in lines if row[0] == conc]
        for idx, label, style in ((5, "prefix cache on", "-o"), (6, "prefix cache off", "--s")):
            ax.plot([row[1] for row in rows], [row[idx] for row in rows], style, label=f"{label}, concurrency {conc}")
    ax.set_xlabel("turn of the conversation")
    ax.set_ylabel("TTFT p50 (ms)")
    ax.set_xticks(range(1, turns + 1))
    ax.set_ylim(bottom=0)
    cfg = on["config"]
    ax.set_title(f"gptserve, {turns}-turn chats: system prompt {cfg['system_prompt_words']} words, "
                 f"user {cfg['prompt_words']} words, {cfg['output_tokens']} tokens out", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "ttft_per_turn.png"), dpi=110)
    print(f"plot: {os.path.join(out_dir, 'ttft_per_turn.png')}", file=sys.stderr)
except ImportError:
    print("matplotlib not installed: no plot (.venv/bin/pip install matplotlib)", file=sys.stderr)
for c, t, pt, con, coff, p_on, p_off, r in lines:
    if t == turns:
        under = r is not None and r < 0.5
        verdict = ("under 0.5" if under else "NOT under 0.5") + (
            ": target met" if under and turns == 5 else ": target not met" if turns == 5 else "; the target is for turn 5 of 5")
        print(f"SUMMARY concurrency {c}: turn {turns} TTFT p50 cache on {fmt(p_on)} ms / cache off {fmt(p_off)} ms "
              f"= {fmt(r, 3)}  ({verdict})")
EOF
}

if [[ "${1-}" == "--summarize" ]]; then summarize "${2:?--summarize DIR}"; exit; fi

args=("$@")
for a in "${args[@]-}"; do
    case "$a" in
        --base-url* | --label* | --json-out*) echo "bench_prefix_cache.sh sets ${a%%=*} itself" >&2; exit 2 ;;
        --request-rate* | --endpoint*) echo "bench_prefix_cache.sh runs chats at concurrency levels: no ${a%%=*}" >&2; exit 2 ;;
    esac
done
has() { case " ${args[*]-} " in *" $1"*) return 0 ;; *) return 1 ;; esac; }
has --multi-turn || args+=(--multi-turn 5)
has --system-prompt-words || args+=(--system-prompt-words 200)
has --prompt-words || args+=(--prompt-words 48)
has --output-tokens || args+=(--output-tokens 32)
has --concurrency || args+=(--concurrency 1)
has --num-prompts || args+=(--num-prompts 4)

GPTSERVE_MODEL=()
if [[ -n "${GGUF:-}" ]]; then GPTSERVE_MODEL=(--model "$GGUF"); fi
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT_DIR="${OUT_DIR:-$ROOT/bench-results/prefix-cache-$STAMP}"
mkdir -p "$OUT_DIR"

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

PID=""
stop() {
    [[ -n "$PID" ]] || return 0
    kill "$PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$PID" 2>/dev/null || true
    PID=""
}
trap stop EXIT
trap 'exit 130' INT TERM

wait_ready() {  # url log
    for _ in $(seq 600); do
        if ! kill -0 "$PID" 2>/dev/null; then
            echo "gptserve exited before it was ready; log:" >&2; tail -n 40 "$2" >&2; return 1
        fi
        curl -sf --noproxy '*' "$1" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "gptserve not ready after 300 s: $1" >&2; tail -n 40 "$2" >&2; return 1
}

{
    echo "date: $STAMP"
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "gptserve commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "bench args: ${args[*]}"
} > "$OUT_DIR/info.txt"

run() {  # on|off
    local label="cache-$1" flags=()
    [[ "$1" == off ]] && flags=(--no-prefix-caching)
    local port log="$OUT_DIR/$label.log"
    port=$(free_port)
    # shellcheck disable=SC2086
    local cmd=("$PY" -m server serve --host 127.0.0.1 --port "$port" "${GPTSERVE_MODEL[@]}" "${flags[@]}"
               --log-level warning ${GPTSERVE_ARGS:-})
    echo "$label server: ${cmd[*]}" | tee -a "$OUT_DIR/info.txt"
    "${cmd[@]}" >"$log" 2>&1 &
    PID=$!
    wait_ready "http://127.0.0.1:$port/ready" "$log"
    echo "load before $label: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT_DIR/info.txt"
    "$PY" -m clients.bench --base-url "http://127.0.0.1:$port/v1" --label "$label" \
        --json-out "$OUT_DIR/$label.json" --save-requests "${args[@]}" | tee "$OUT_DIR/$label.txt"
    echo "load after $label: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT_DIR/info.txt"
    stop
}

for mode in ${ORDER:-on off}; do run "$mode"; done

summarize "$OUT_DIR"
echo "results in $OUT_DIR"
