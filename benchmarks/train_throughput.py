#!/usr/bin/env python
"""Training throughput: protege's SFT against a plain TRL SFTTrainer with its defaults, side by side.

Both runs train a LoRA adapter (the same LoraConfig: protege's defaults) on the same chat records,
the same examples in the same number of optimizer steps (one epoch), with the same learning rate:

- baseline: `SFTTrainer` with TRL's defaults on prompt-completion data. The SFTConfig sets only
  output_dir, per_device_train_batch_size, num_train_epochs, learning_rate, report_to="none",
  save_strategy="no" (and use_cpu without a GPU, logging_steps=1 so every step's loss is seen).
  So it keeps TRL's gradient_checkpointing=True, bf16=True, padding_free=False, packing=False.
- protege: `protege.train.sft.train_sft` with TrainConfig(adapter="lora", batch_size, epochs=1,
  learning_rate, report_to=["none"]) and seed 42 (TRL's default seed, so both see the same batches).

The data: the instructions, seeds and inputs of examples/arithmetic and examples/iso-dates, each
answered by its task's teacher, with the task instruction as the system message; mixed, and
repeated when --examples asks for more than there are.

Reported for each: the training's wall seconds (the Trainer's train_runtime: model loading and
dataset preparation excluded), answer tokens/s (tokens whose label is not -100, counted in each
batch the collator builds, the same way for both), all tokens/s (the tokens of the examples, no
padding), the first and final loss and the mean loss over the last steps (equal learning: the
same loss after the same examples), and the model FLOPs utilization (MFU): model FLOPs per second
(formula in training_flops) over the torch.mm peak, measured in this same process on the same threads,
of the dtype the run's matmuls use (bf16 autocast for TRL's default; for protege bf16 on a GPU or a CPU
with AMX, else fp32), and on a CPU also against the fp32 peak.
On shared cores the numbers swing widely: the peaks are taken before and after the runs, and a large
gap between the two says the machine was busy; --order swaps which run goes first.

    python benchmarks/train_throughput.py                      # embedded SmolLM2-135M, CPU or GPU
    python benchmarks/train_throughput.py --model tiny:0 --examples 32   # smoke run
    python benchmarks/train_throughput.py --device cuda --examples 1024 --batch-size 16
    python benchmarks/train_throughput.py --threads 1 --order protege-first

The last printed line is the answer-token throughput ratio protege / TRL defaults.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from protege.train.common import use_bf16  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
TASKS = ("arithmetic", "iso-dates")
SEED = 42  # TRL's (TrainingArguments') default seed; protege is given the same one


# ---- data ---------------------------------------------------------------------------------------

def task_teacher(name: str):
    """The task's teacher.py, loaded under a unique module name (both tasks call it teacher.py)."""
    spec = importlib.util.spec_from_file_location(f"bench_teacher_{name.replace('-', '_')}",
                                                  EXAMPLES / name / "teacher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.teacher


def build_records(n: int) -> list[dict]:
    """n chat records: both tasks' seeds and inputs, answered by their teachers, mixed."""
    from protege.config import load_task
    from protege.records import sft_record

    pool = []
    for name in TASKS:
        task, teacher = load_task(EXAMPLES / name), task_teacher(name)
        for text in [seed.input for seed in task.seeds] + list(task.inputs):
            answer = teacher(SimpleNamespace(purpose="answer", input=text))
            if answer:
                pool.append(sft_record(task.spec.instruction, text, answer, source=name, round_=0))
    random.Random(0).shuffle(pool)
    return [pool[i % len(pool)] for i in range(n)]


def prompt_completion(records: list[dict]):
    """The same chats as TRL's conversational prompt-completion rows."""
    from datasets import Dataset
    return Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records])


# ---- counting what each batch holds ---------------------------------------------------------------

class BatchRecorder:
    """Wraps a data collator; per batch: examples, tokens (no padding), positions computed (with
    padding), answer tokens (label != -100), the sum of L*(L+1)/2 over its examples (causal
    attention pairs) and a fingerprint of its examples' token ids."""

    def __init__(self, collator):
        self.collator, self.batches = collator, []

    def __call__(self, examples):
        batch = self.collator(examples)
        lengths = [len(example["input_ids"]) for example in examples]
        self.batches.append({
            "examples": len(examples),
            "tokens": sum(lengths),
            "positions": int(batch["input_ids"].numel()),
            "answer": int((batch["labels"] != -100).sum()),
            "pairs": sum(length * (length + 1) // 2 for length in lengths),
            "fingerprint": hashlib.sha1(json.dumps(sorted(list(map(int, e["input_ids"])) for e in examples))
                                        .encode()).hexdigest()})
        return batch

    def total(self, key: str) -> int:
        return sum(b[key] for b in self.batches)


# ---- FLOPs and the matmul peak ----------------------------------------------------------------------

def model_shape(model_path: Path) -> dict:
    config = json.loads((model_path / "config.json").read_text())
    config = config.get("text_config", config)
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    return {"layers": config["num_hidden_layers"], "hidden": hidden, "heads": heads, "head_dim": head_dim,
            "kv_heads": config.get("num_key_value_heads") or heads,
            "intermediate": config["intermediate_size"], "vocab": config["vocab_size"]}


def linear_shapes(s: dict) -> list[tuple[int, int]]:
    """(in, out) of each linear layer in one decoder layer (Llama-style: q, k, v, o, gate, up, down)."""
    h, q, kv, i = s["hidden"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"], s["intermediate"]
    return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]


def training_flops(s: dict, lora_r: int, tokens: int, answer_tokens: int, pairs: int) -> dict:
    """Model FLOPs of LoRA training (recomputation by gradient checkpointing not counted; a matmul
    of m x k by k x n is 2mkn FLOPs):

      linear layers, per token:  4 * N_lin   forward 2*N_lin, backward 2*N_lin for the activation
                                             gradients; the base weights are frozen, so no weight
                                             gradients (full fine-tuning would be 6 * N_lin)
      LoRA branches, per token:  6 * N_lora  forward 2, activation gradients 2, weight gradients 2
      attention, per example of L tokens:
                                 12 * layers * heads*head_dim * L(L+1)/2
                                 QK^T and AV are 2*c*heads*head_dim FLOPs each for a token seeing
                                 c positions (causal: c = 1..L), forward 4, backward 8
      LM head, per answer token: 4 * vocab * hidden
                                 TRL's fused LM head projects only the labelled positions;
                                 forward 2, activation gradient 2 (tied embedding frozen)
    Embedding lookups, norms, activations, softmax and the optimizer are left out (small)."""
    shapes = linear_shapes(s)
    n_lin = s["layers"] * sum(a * b for a, b in shapes)
    n_lora = s["layers"] * sum(lora_r * (a + b) for a, b in shapes)
    parts = {"linear": 4 * n_lin * tokens, "lora": 6 * n_lora * tokens,
             "attention": 12 * s["layers"] * s["heads"] * s["head_dim"] * pairs,
             "lm_head": 4 * s["vocab"] * s["hidden"] * answer_tokens}
    return {"total": sum(parts.values()), "parts": parts, "n_linear": n_lin, "n_lora": n_lora}


def matmul_peak(device: str, precision: str, repeats: int = 5) -> float:
    """Best FLOP/s of one square torch.mm: 2048x2048 on CPU (on torch's threads), 8192x8192 on GPU."""
    n = 8192 if device == "cuda" else 2048
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        torch.mm(a, b)
    sync()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def peak_description(device: str, precision: str) -> str:
    n = 8192 if device == "cuda" else 2048
    where = "GPU" if device == "cuda" else f"{torch.get_num_threads()} CPU thread(s)"
    return f"{precision} {n}x{n} torch.mm on {where}"


# ---- the two runs ---------------------------------------------------------------------------------

def losses(history: list[dict]) -> list[float]:
    return [entry["loss"] for entry in history if "loss" in entry and "train_loss" not in entry]


def run_trl_defaults(model_path: Path, records: list[dict], args, device: str, lora, out: Path) -> dict:
    from trl import SFTConfig, SFTTrainer

    config = SFTConfig(output_dir=str(out), per_device_train_batch_size=args.batch_size, num_train_epochs=1,
                       learning_rate=args.lr, report_to="none", save_strategy="no",
                       use_cpu=device != "cuda", logging_steps=1)
    trainer = SFTTrainer(model=str(model_path), args=config, train_dataset=prompt_completion(records),
                         peft_config=lora)
    settings = {key: getattr(config, key) for key in
                ("bf16", "gradient_checkpointing", "padding_free", "packing", "completion_only_loss",
                 "max_length", "lr_scheduler_type", "seed")}
    settings["model dtype"] = str(next(trainer.model.parameters()).dtype).replace("torch.", "")
    print(f"TRL-defaults effective settings: {settings}", flush=True)
    trainer.data_collator = recorder = BatchRecorder(trainer.data_collator)
    result = trainer.train()
    return {"runtime": result.metrics["train_runtime"], "recorder": recorder,
            "losses": losses(trainer.state.log_history), "steps": trainer.state.global_step,
            "precision": "bf16" if config.bf16 else "fp16" if config.fp16 else "fp32"}


def run_protege(model_path: Path, records: list[dict], args, device: str, out: Path) -> dict:
    from protege.config import TrainConfig
    from protege.train.sft import train_sft

    cfg = TrainConfig(adapter="lora", batch_size=args.batch_size, epochs=1, learning_rate=args.lr,
                      report_to=["none"], seed=SEED)
    recorder = None

    def record(collator, tokenizer):
        nonlocal recorder
        recorder = BatchRecorder(collator)
        return recorder

    log = train_sft(model_path, records, cfg, out, device=device, wrap_collator=record)
    if log.get("tokens", {}).get("answer") not in (None, recorder.total("answer")):
        print(f"warning: protege's own answer-token count {log['tokens']['answer']} differs from "
              f"{recorder.total('answer')}", file=sys.stderr)
    return {"runtime": log["metrics"]["train_runtime"], "recorder": recorder,
            "losses": losses(log["history"]), "steps": len(recorder.batches),
            # what protege.train.common.trainer_kwargs picked: bf16 autocast on a GPU, or a CPU with AMX
            "precision": "bf16" if use_bf16(device) else "fp32"}


# ---- report -------------------------------------------------------------------------------------------

def summary(name: str, run: dict, s: dict, lora_r: int, peaks: dict, last: int) -> dict:
    rec, seconds = run["recorder"], run["runtime"]
    flops = training_flops(s, lora_r, rec.total("tokens"), rec.total("answer"), rec.total("pairs"))
    tail = run["losses"][-last:]
    row = {"name": name, "steps": run["steps"], "examples": rec.total("examples"), "seconds": seconds,
           "total": run.get("total", math.nan),
           "answer_tps": rec.total("answer") / seconds, "tps": rec.total("tokens") / seconds,
           "padding": 1 - rec.total("tokens") / max(rec.total("positions"), 1),
           "first_loss": run["losses"][0] if run["losses"] else math.nan,
           "final_loss": run["losses"][-1] if run["losses"] else math.nan,
           "tail_loss": sum(tail) / len(tail) if tail else math.nan,
           "flops": flops["total"], "flops_per_s": flops["total"] / seconds}
    row["precision"] = run["precision"]
    row["mfu"] = row["flops_per_s"] / peaks[run["precision"]]
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct",
                        help="embedded:NAME, tiny:SEED or a model directory (default: %(default)s)")
    parser.add_argument("--examples", type=int, default=128, help="training examples, one epoch (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per optimizer step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of both runs (default: %(default)s)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: cuda when there is a GPU, else cpu (protege: bf16 on a GPU or an AMX CPU)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads for the runs and the peak (default: torch's own choice)")
    parser.add_argument("--order", choices=["trl-first", "protege-first"], default="trl-first",
                        help="which run goes first (default: %(default)s)")
    parser.add_argument("--only", choices=["both", "trl", "protege"], default="both",
                        help="run one side only (the ratio needs both)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renames (gradient_checkpointing)
    if args.threads:
        torch.set_num_threads(args.threads)

    from protege.models import model_dir, pick_device
    from protege.train.adapters import peft_config
    from protege.config import TrainConfig

    device = pick_device(args.device)
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible to torch")
    model_path = model_dir(args.model, REPO)
    shape = model_shape(model_path)
    lora_cfg = TrainConfig(adapter="lora")
    records = build_records(args.examples)
    steps = math.ceil(args.examples / args.batch_size)
    last = max(1, min(10, steps // 4))
    print(f"model {args.model} ({model_path}), device {device}, torch threads {torch.get_num_threads()}, "
          f"{args.examples} examples, batch {args.batch_size}, {steps} steps, lr {args.lr:g}, "
          f"LoRA r={lora_cfg.adapter.r} alpha={lora_cfg.adapter.alpha} targets={lora_cfg.adapter.targets}", flush=True)

    precisions = ["bf16"] if device == "cuda" else ["fp32", "bf16"]
    before = {p: matmul_peak(device, p) for p in precisions}
    runs = {}
    sides = {"trl": ("TRL-defaults", "TRL SFTTrainer, defaults",
                     lambda out: run_trl_defaults(model_path, records, args, device, peft_config(lora_cfg), out)),
             "protege": ("protege", "protege train_sft",
                         lambda out: run_protege(model_path, records, args, device, out))}
    order = ["trl", "protege"] if args.order == "trl-first" else ["protege", "trl"]
    with tempfile.TemporaryDirectory(prefix="protege-bench-") as tmp:
        for side in order:
            if args.only not in ("both", side):
                continue
            name, title, run = sides[side]
            print(f"\n== {title} ==", flush=True)
            start = time.perf_counter()
            runs[name] = run(Path(tmp) / side)
            runs[name]["total"] = time.perf_counter() - start
    runs = {name: runs[name] for name in ("TRL-defaults", "protege") if name in runs}
    after = {p: matmul_peak(device, p) for p in precisions}
    peaks = {p: max(before[p], after[p]) for p in precisions}
    if device == "cuda" and any(run["precision"] != "bf16" for run in runs.values()):
        peaks["fp32"] = matmul_peak(device, "fp32")  # a GPU without bf16

    rows = [summary(name, run, shape, lora_cfg.adapter.r, peaks, last) for name, run in runs.items()]
    flops = training_flops(shape, lora_cfg.adapter.r, 1, 0, 0)
    print()
    for p in precisions:
        print(f"matmul peak {p}: {peaks[p] / 1e9:.1f} GFLOP/s ({peak_description(device, p)}, best of 5; "
              f"{before[p] / 1e9:.1f} before the runs, {after[p] / 1e9:.1f} after: a large gap means the cores "
              f"were busy with something else)")
    print(f"model: {shape['layers']} layers, hidden {shape['hidden']}, {flops['n_linear'] / 1e6:.1f}M linear "
          f"weights in the layers, {flops['n_lora'] / 1e6:.2f}M LoRA weights, vocab {shape['vocab']}")
    print(f"train s: the Trainer's train_runtime; total s: with model load, tokenization and saving; "
          f"last-{last} loss: mean loss of the last {last} step(s)\n")
    header = (f"{'run':<14}{'steps':>6}{'examples':>9}{'train s':>9}{'total s':>9}{'answer tok/s':>14}"
              f"{'all tok/s':>11}{'padding':>9}{'first loss':>11}{'final loss':>11}{f'last-{last} loss':>13}"
              f"{'GFLOP/s':>9}{'dtype':>6}{'MFU':>8}")
    print(header)
    for r in rows:
        print(f"{r['name']:<14}{r['steps']:>6}{r['examples']:>9}{r['seconds']:>9.1f}{r['total']:>9.1f}"
              f"{r['answer_tps']:>14.1f}{r['tps']:>11.1f}{r['padding']:>9.1%}{r['first_loss']:>11.4f}"
              f"{r['final_loss']:>11.4f}{r['tail_loss']:>13.4f}{r['flops_per_s'] / 1e9:>9.2f}"
              f"{r['precision']:>6}{r['mfu']:>8.1%}")
    if len(rows) == 2:
        base, ours = rows
        same = [a["fingerprint"] == b["fingerprint"] for a, b in
                zip(runs["TRL-defaults"]["recorder"].batches, runs["protege"]["recorder"].batches)]
        print(f"\nsame examples in the same steps: {sum(same)}/{len(same)} batches identical "
              f"(token for token); answer tokens {runs['TRL-defaults']['recorder'].total('answer')} vs "
              f"{runs['protege']['recorder'].total('answer')}")
        parts = training_flops(shape, lora_cfg.adapter.r, runs["protege"]["recorder"].total("tokens"),
                               runs["protege"]["recorder"].total("answer"),
                               runs["protege"]["recorder"].total("pairs"))["parts"]
        print("protege model FLOPs: " + ", ".join(f"{k} {v / 1e12:.3f} T" for k, v in parts.items())
              + f"; total {ours['flops'] / 1e12:.3f} TFLOP in {ours['seconds']:.1f} s")
        print(f"protege MFU = {ours['flops_per_s'] / 1e9:.2f} GFLOP/s / {peaks[ours['precision']] / 1e9:.1f} GFLOP/s "
              f"({ours['precision']} peak) = {ours['mfu']:.1%}; each run's MFU is against the peak of the dtype its "
              f"matmuls run in (TRL-defaults: {base['precision']} autocast)")
        if "fp32" in peaks and ours["precision"] != "fp32":
            print(f"against the fp32 matmul peak instead: protege {ours['flops_per_s'] / peaks['fp32']:.1%}, "
                  f"TRL-defaults {base['flops_per_s'] / peaks['fp32']:.1%}")
        print(f"answer-token throughput ratio protege/TRL-defaults: {ours['answer_tps'] / base['answer_tps']:.2f}x")


if __name__ == "__main__":
    main()
