#!/usr/bin/env python3
"""Plot clients/bench.py JSON results: output tokens/s, TTFT and TPOT against concurrency (or
request rate), one line per file (its --label). Needs matplotlib (`pip install matplotlib`).

    python scripts/plot_bench.py bench-results/gptserve.json bench-results/llama-server.json -o docs/bench.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(path: str) -> dict:
    with open(path) as f:
        report = json.load(f)
    report.setdefault("label", Path(path).stem)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="JSON files written by clients/bench.py --json-out")
    p.add_argument("-o", "--output", default="bench-results/bench.png", help="PNG to write")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_bench.py needs matplotlib: .venv/bin/pip install matplotlib", file=sys.stderr)
        return 2

    reports = [load(path) for path in args.results]
    by_rate = all(r["config"].get("request_rate") for r in reports)
    xkey, xlabel = ("request_rate", "request rate (req/s)") if by_rate else ("concurrency", "concurrency")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = [
        ("output_throughput_tok_s", None, "output tokens/s", "throughput"),
        ("ttft_ms", "p50", "TTFT (ms)", "time to first token (p50 solid, p99 dashed)"),
        ("tpot_ms", "p50", "TPOT (ms)", "time per output token (p50 solid, p99 dashed)"),
    ]
    for ax, (key, sub, ylabel, title) in zip(axes, panels):
        for report in reports:
            levels = [lv for lv in report["results"] if lv.get(xkey) is not None and lv["completed"]]
            xs = [lv[xkey] for lv in levels]
            if sub is None:
                ys = [lv[key] for lv in levels]
                line, = ax.plot(xs, ys, marker="o", label=report["label"])
                for x, y in zip(xs, ys):
                    ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(0, 5),
                                ha="center", fontsize=8, color=line.get_color())
            else:
                line, = ax.plot(xs, [lv[key]["p50"] for lv in levels], marker="o", label=f"{report['label']} p50")
                ax.plot(xs, [lv[key]["p99"] for lv in levels], marker="x", linestyle="--",
                        color=line.get_color(), label=f"{report['label']} p99")
        ax.set_xscale("log", base=2)
        ticks = sorted({lv[xkey] for r in reports for lv in r["results"]
                        if lv.get(xkey) is not None and lv[xkey] != float("inf")})
        if ticks:
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        if key != "output_throughput_tok_s":
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)

    cfg = reports[0]["config"]
    machine = reports[0].get("machine", {})
    model = Path(str(reports[0].get("model", ""))).name
    title = args.title or (f"{model}: {cfg['prompt_words']}-word prompts, "
                           f"{cfg['output_tokens']} output tokens — {machine.get('nproc', '?')} cores, "
                           f"{machine.get('cpu') or ''}")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
