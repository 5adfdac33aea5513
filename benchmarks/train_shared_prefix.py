#!/usr/bin/env python
"""Training on agent episodes with the shared prefix computed once per batch, against every example
carrying its own copy, side by side in one process: the same records, seed, batches and steps.

The records are the scripted expert's episodes on the first --examples requests of
examples/shop-agent's inputs.jsonl (the instruction and the four tools' schemas make the prefix every
example shares), trained as `protege run` trains them: protege.train.sft.train_sft, LoRA, one epoch,
padding-free rows. The copies run takes the same trainer with the sharing collator unwrapped.
Reported: the Trainer's train_runtime, the tokens the rows held, and the mean loss of each run (the
same numbers up to float rounding: sharing changes what is computed, not the maths).

    python benchmarks/train_shared_prefix.py                          # embedded SmolLM2-135M
    python benchmarks/train_shared_prefix.py --model tiny:0 --examples 16   # smoke run

The last printed line is the ratio of training times, copies / shared (above 1: sharing faster).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "examples" / "shop-agent"))
from protege.agents.environment import load_tools  # noqa: E402
from protege.agents.episodes import Step, run_episodes  # noqa: E402
from protege.config import TrainConfig, load_task  # noqa: E402
from protege.models import model_dir  # noqa: E402
from protege.synth.trajectories import episode_record  # noqa: E402
from protege.train.common import TokenCounter  # noqa: E402
from protege.train.sft import train_sft  # noqa: E402
from teacher import act  # noqa: E402


def expert_records(n: int) -> list[dict]:
    task = load_task(ROOT / "examples" / "shop-agent")
    environment = load_tools(task.spec.tools, task.directory)
    requests = [json.loads(line)["input"] for line in (task.directory / "inputs.jsonl").read_text().splitlines()[:n]]
    episodes = run_episodes(environment, requests, lambda histories: [Step(act(h)) for h in histories],
                            task.spec.tools.max_turns)
    return [episode_record(task.spec.instruction, environment.schemas, e, "bench", 0) for e in episodes]


def train(model_path: Path, records: list[dict], cfg: TrainConfig, share: bool) -> dict:
    counted = {}

    def collator(shared, tokenizer):  # train_sft hands over the sharing collator; its .collator shares nothing
        counted["counter"] = TokenCounter(shared if share else shared.collator)
        return counted["counter"]

    with tempfile.TemporaryDirectory() as out:
        log = train_sft(model_path, records, cfg, Path(out), wrap_collator=collator)
    losses = [h["loss"] for h in log["history"] if "loss" in h]
    return {"seconds": log["metrics"]["train_runtime"], "tokens": counted["counter"].tokens,
            "loss": sum(losses) / len(losses)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=2048)
    args = parser.parse_args()
    records = expert_records(args.examples)
    cfg = TrainConfig(adapter="lora", epochs=1, batch_size=args.batch_size, max_length=args.max_length, report_to=["none"],
                      seed=42)
    path = model_dir(args.model)
    copies = train(path, records, cfg, share=False)
    shared = train(path, records, cfg, share=True)
    for name, run in (("copies", copies), ("shared prefix", shared)):
        print(f"{name}: {run['seconds']:.1f} s, {run['tokens']} tokens in the rows, mean loss {run['loss']:.4f}")
    print(f"copies / shared prefix training time: {copies['seconds'] / shared['seconds']:.2f}x")


if __name__ == "__main__":
    main()
