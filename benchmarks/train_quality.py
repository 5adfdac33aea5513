"""Held-out accuracy of each training method on one task, side by side with the base and teacher.

Each configuration is one `protege run TASK --set rounds=1 --set train.method=... --set
train.adapter=...`, so every method learns from the same round-0 teacher data (cft adds the
teacher's critiques, dpo and grpo the student's own samples). Prints a Markdown table and, last,
the best method against plain SFT.

    python benchmarks/train_quality.py examples/arithmetic --runs runs/quality
    python benchmarks/train_quality.py examples/arithmetic --only sft-lora,dpo-lora --set train.device=cuda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    "sft-lora": ["train.method=sft", "train.adapter=lora"],
    "masked-thought-lora": ["train.method=masked-thought", "train.adapter=lora"],
    "cft-lora": ["train.method=cft", "train.adapter=lora", "train.method.ratio=0.5"],
    "dpo-lora": ["train.method=dpo", "train.adapter=lora"],
    "grpo-lora": ["train.method=grpo", "train.adapter=lora"],
    # each adapter at its default learning rate (1e-3 lora, 2e-4 hft)
    "sft-hft": ["train.method=sft", "train.adapter=hft"],
    "cft-hft": ["train.method=cft", "train.adapter=hft", "train.method.ratio=0.5"],
}


def run_config(task: str, runs: Path, name: str, extra: list[str]) -> dict:
    sets = [arg for pair in CONFIGS[name] + ["rounds=1"] + extra for arg in ("--set", pair)]
    start = time.time()
    # one run directory for all: the data, the base and teacher scores and the sft stage that dpo
    # and grpo start from are computed once and shared, as stages keyed by their inputs
    done = subprocess.run([sys.executable, "-m", "protege.cli", "run", task, "--run-dir", str(runs), *sets],
                          stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        return {"name": name, "error": f"exit {done.returncode}"}
    summary = json.loads((runs / "summary.json").read_text())
    best = summary["rounds"][0]
    lost = best.get("forgetting") or {}
    return {"name": name, "test": best["test_accuracy"], "dev": best["dev_accuracy"], "n": summary["test_items"],
            "probe_change": lost.get("probe_change"), "negative_flips": lost.get("negative_flip_rate"),
            "ppl_ratio": lost.get("perplexity_ratio"), "probe_base": lost.get("probe_base"),
            "base": summary["base"]["accuracy"], "teacher": summary["teacher"]["accuracy"],
            "examples": best["train_examples"], "requests": summary["teacher_requests"]["spent"],
            "seconds": round(time.time() - start), "device": summary["device"]}


def number(value, form: str) -> str:
    return "" if value is None else format(value, form)


def table(rows: list[dict]) -> str:
    ok = [r for r in rows if "error" not in r]
    lines = ["| configuration | held-out accuracy | dev | probe change | negative flips | ppl ratio | examples | "
             "teacher requests | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    if ok:
        probe = next((r["probe_base"] for r in ok if r["probe_base"] is not None), None)
        lines.append(f"| base student | {ok[0]['base']:.1%} | | {number(probe, '.1%')} (probe accuracy) | | | | | |")
        lines.append(f"| teacher | {ok[0]['teacher']:.1%} | | | | | | | |")
    for r in rows:
        lines.append(f"| {r['name']} | failed: {r['error']} | | | | | | | |" if "error" in r else
                     f"| {r['name']} | {r['test']:.1%} | {r['dev']:.1%} | {number(r['probe_change'], '+.1%')} | "
                     f"{number(r['negative_flips'], '.1%')} | {number(r['ppl_ratio'], '.3f')} | {r['examples']} | "
                     f"{r['requests']} | {r['seconds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", help="task directory or YAML, e.g. examples/arithmetic")
    parser.add_argument("--runs", default="runs/quality", help="the run directory all configurations share")
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configurations")
    parser.add_argument("--set", action="append", default=[], help="extra task override for every run")
    args = parser.parse_args()
    rows = []
    for name in args.only.split(","):
        rows.append(run_config(args.task, Path(args.runs), name, args.set))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))
    ok = [r for r in rows if "error" not in r]
    sft = next((r for r in ok if r["name"] == "sft-lora"), None)
    if ok and sft:
        best = max(ok, key=lambda r: r["dev"])
        print(f"best on dev: {best['name']} {best['test']:.1%} held-out vs sft-lora {sft['test']:.1%} "
              f"(n={sft['n']}, ratio {best['test'] / max(sft['test'], 1e-9):.2f}x)")


if __name__ == "__main__":
    main()
