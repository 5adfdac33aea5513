#!/usr/bin/env python
"""Agent turns: protege's generate (a static KV cache that starts with the shared prefix) against the
same batches decoded with a dynamic cache (the prefix's cache copied into every batch, as transformers
does by default), side by side on the same prompts and model in one process.

The prompts are what a student sees in the middle of examples/shop-agent's episodes: the scripted
expert acts on the first --n test requests, and every turn of every episode becomes a prompt (tools in
the system message, the calls and results so far), rendered by protege.models.chat_format for the
model's template. Both sides decode greedily, at most --max-new-tokens, in batches of --batch-size,
sorted by length; the answers are compared string for string.

    python benchmarks/agent_turns.py                         # embedded SmolLM2-135M, 40 requests
    python benchmarks/agent_turns.py --model tiny:0 --n 8    # smoke run

The last printed line is the ratio of wall times, dynamic cache / protege (above 1: protege faster).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "examples" / "shop-agent"))
from protege.agents.environment import load_tools  # noqa: E402
from protege.agents.episodes import run_episodes  # noqa: E402
from protege.config import load_task  # noqa: E402
from protege.models import load_model, model_dir  # noqa: E402
from protege.models.chat_format import render_messages  # noqa: E402
from protege.models.generate import batch_inputs, chat_prompts, generate, prefix_cache, shared_prefix  # noqa: E402
from teacher import act  # noqa: E402


def episode_prompts(n: int, tokenizer) -> list[list[dict]]:
    """Every turn of the expert's episodes on the first n test requests, as the student's chats."""
    task = load_task(ROOT / "examples" / "shop-agent")
    environment = load_tools(task.spec.tools, task.directory)
    expert = lambda histories: [type("Step", (), {"message": act(h), "valid": True})() for h in histories]  # noqa: E731
    episodes = run_episodes(environment, [t.input for t in task.test[:n]], expert, task.spec.tools.max_turns)
    system = [{"role": "system", "content": task.spec.instruction}]
    turns = [e.messages[:i] for e in episodes for i, m in enumerate(e.messages) if m["role"] == "assistant"]
    return [render_messages(system + history, environment.schemas, tokenizer) for history in turns]


@torch.inference_mode()
def dynamic_cache_generate(model, tokenizer, chats, max_new_tokens: int, batch_size: int) -> list[str]:
    """The same batches, the prefix's cache deep-copied into each and grown by concatenation."""
    prompts = chat_prompts(tokenizer, chats)
    prefix = shared_prefix(prompts)
    cache = prefix_cache(model, prefix)
    order, replies = sorted(range(len(prompts)), key=lambda i: len(prompts[i])), [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = batch_inputs(tokenizer, [prompts[i] for i in chunk], prefix)
        if cache is not None:
            batch["past_key_values"] = copy.deepcopy(cache)
            batch["past_key_values"].batch_repeat_interleave(len(chunk))
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                             top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        for i, row in zip(chunk, out[:, batch["input_ids"].shape[1]:]):
            replies[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    return replies


def timed(fn):
    begin = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=40, help="test requests whose episodes give the prompts")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    model, tokenizer = load_model(model_dir(args.model))
    chats = episode_prompts(args.n, tokenizer)
    lengths = [len(p) for p in chat_prompts(tokenizer, chats)]
    print(f"{len(chats)} prompts, {min(lengths)}-{max(lengths)} tokens, load {os.getloadavg()[0]:.2f}")
    ours, ours_s = timed(lambda: generate(model, tokenizer, chats, args.max_new_tokens, args.batch_size))
    plain, plain_s = timed(lambda: dynamic_cache_generate(model, tokenizer, chats, args.max_new_tokens,
                                                          args.batch_size))
    same = sum(a == b for a, b in zip(ours, plain))
    print(f"protege (static cache): {ours_s:.1f} s; dynamic cache: {plain_s:.1f} s; same answers {same}/{len(chats)}; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"dynamic cache / protege wall time: {plain_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
