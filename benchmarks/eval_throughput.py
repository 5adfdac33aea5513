#!/usr/bin/env python
"""Evaluation throughput: protege's generate against a per-item model.generate loop, side by side.

Both sides answer the same prompts: the first --n test items of a task (examples/arithmetic unless
--task says otherwise) as the student sees them in evaluation (the task instruction as the system
message), greedy, at most --max-new-tokens each, with the same model object in the same process.

- per-item loop: for each prompt, model.generate on that prompt's token ids alone (no padding), greedy,
  stopping at the tokenizer's EOS: what one writes without thinking about speed.
- protege: protege.models.generate.generate(model, tokenizer, chats, max_new_tokens, batch_size):
  prompts sorted by length, batches with left padding and a KV cache, the prompts' shared prefix
  encoded once.

Each side counts the tokens it generated, up to and including EOS (protege's are read from what
model.generate returned inside generate), over the wall time of the whole call, tokenization and
decoding included. The answers of both sides are compared string for string. Load averages before and
after tell whether other work shared the cores; --order swaps which side runs first.

    python benchmarks/eval_throughput.py                          # embedded SmolLM2-135M, 100 prompts
    python benchmarks/eval_throughput.py --model tiny:0 --n 20    # smoke run, seconds
    python benchmarks/eval_throughput.py --order protege-first --threads 1

The last printed line is the ratio of generated tokens/s, protege / per-item loop.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from protege.config import load_task  # noqa: E402
from protege.config import EvalConfig
from protege.models.generate import chat_prompts, generate  # noqa: E402
from protege.records import task_chat  # noqa: E402
from protege.models.vllm_generate import wants_vllm  # noqa: E402
from protege.models import load_model, model_dir, pick_device  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def task_chats(task_dir: Path, n: int) -> list[list[dict]]:
    task = load_task(task_dir)
    items = [task.test[i % len(task.test)] for i in range(n)]
    return [task_chat(task.spec.instruction, item.input) for item in items]


def until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[:tokens.index(eos) + 1] if eos in tokens else tokens


def per_item_loop(model, tokenizer, chats, max_new_tokens: int) -> tuple[list[str], int]:
    replies, generated = [], 0
    for prompt in chat_prompts(tokenizer, chats):
        ids = torch.tensor([prompt], device=model.device)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, temperature=None, top_p=None, top_k=None,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        answer = until_eos(out[0, len(prompt):].tolist(), tokenizer.eos_token_id)
        generated += len(answer)
        replies.append(tokenizer.decode(answer, skip_special_tokens=True).strip())
    return replies, generated


def protege_generate(model, tokenizer, chats, max_new_tokens: int, batch_size: int) -> tuple[list[str], int]:
    """generate() returns strings; the generated tokens are counted from what model.generate returned
    to it, read through a wrapper on this one model object."""
    plain, counted = model.generate, []

    def counting(**kwargs):
        out = plain(**kwargs)
        new = out[:, kwargs["input_ids"].shape[1]:].tolist()
        counted.extend(len(until_eos(row, tokenizer.eos_token_id)) for row in new)
        return out

    model.generate = counting
    try:
        replies = generate(model, tokenizer, chats, max_new_tokens, batch_size, desc="protege")
    finally:
        model.generate = plain
    if wants_vllm(model):  # vLLM generated, not model.generate: count the answers' tokens instead
        print("protege generated with vLLM; its tokens are counted by re-encoding its answers (EOS not counted)")
        return replies, sum(len(tokenizer.encode(r, add_special_tokens=False)) for r in replies)
    return replies, sum(counted)


def timed(run) -> tuple[list[str], int, float]:
    start = time.perf_counter()
    replies, tokens = run()
    return replies, tokens, time.perf_counter() - start


def warm_up(model, tokenizer, chats) -> None:
    """First calls pay one-off costs (kernel selection, allocations) that belong to neither side."""
    per_item_loop(model, tokenizer, chats[:1], 4)
    generate(model, tokenizer, chats[:2], 4, desc="warm-up")


def report(name: str, tokens: int, seconds: float, n: int) -> float:
    rate = tokens / seconds
    print(f"{name:>14}: {tokens} tokens in {seconds:.1f} s = {rate:.1f} tokens/s ({n / seconds:.2f} prompts/s)")
    return rate


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default=str(REPO / "examples" / "arithmetic"), help="task directory or YAML")
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct",
                        help="embedded:NAME, tiny:SEED or a model directory")
    parser.add_argument("--n", type=int, default=100, help="prompts (test items, repeated if fewer)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=EvalConfig().batch_size,
                        help="protege's batch size (default: eval.batch_size's default)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--order", default="loop-first", choices=["loop-first", "protege-first"])
    return parser.parse_args()


def print_agreement(loop: list[str], protege: list[str]) -> None:
    same = [a == b for a, b in zip(loop, protege)]
    print(f"identical answers: {sum(same)}/{len(same)} ({sum(same) / len(same):.0%})")
    for i in [i for i, s in enumerate(same) if not s][:3]:
        print(f"  item {i}: loop    {loop[i][:80]!r}\n          protege {protege[i][:80]!r}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model, tokenizer = load_model(model_dir(args.model), device)
    chats = task_chats(Path(args.task), args.n)
    print(f"model {args.model} on {device}, {torch.get_num_threads()} threads; {args.n} prompts from {args.task}; "
          f"max {args.max_new_tokens} new tokens; protege batch size {args.batch_size}")
    warm_up(model, tokenizer, chats)
    sides = {"per-item loop": lambda: per_item_loop(model, tokenizer, chats, args.max_new_tokens),
             "protege": lambda: protege_generate(model, tokenizer, chats, args.max_new_tokens, args.batch_size)}
    order = list(sides) if args.order == "loop-first" else list(reversed(sides))
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    results = {name: timed(sides[name]) for name in order}
    print(f"load average after:  {os.getloadavg()[0]:.2f}  (above {args.threads}: other work shared the cores)")
    rates = {name: report(name, tokens, seconds, args.n) for name, (_, tokens, seconds) in results.items()}
    print_agreement(results["per-item loop"][0], results["protege"][0])
    print(f"ratio (protege / per-item loop tokens/s): {rates['protege'] / rates['per-item loop']:.1f}x")


if __name__ == "__main__":
    main()
