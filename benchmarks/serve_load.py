#!/usr/bin/env python
"""Serving under load: `protege serve` with batching against the same server one request at a time.

One run starts the server twice on 127.0.0.1 (uvicorn in a thread of this process, built by
protege.serve.build_app as `protege serve` builds it), on the same model:

- batched: requests that arrive together are generated as one batch (--max-batch, default 32);
- one-at-a-time: max_batch 1, so every request is generated alone, in arrival order.

Each time, --clients concurrent clients (the real openai AsyncOpenAI client, no retries) share
--requests chat completions: short questions, greedy, at most --max-tokens tokens each. A client sends
its next request as soon as its last one is answered. Before timing, one request warms the server up.

For each side it prints requests/s (answered requests over the wall time of the whole load), p50 and
p99 latency, the error count and the batch sizes the server ran; then how many answers the two sides
gave identically (greedy, so batching should not change them). Load averages before and after tell
whether other work shared the cores; --order swaps which side runs first.

    python benchmarks/serve_load.py                                    # embedded SmolLM2-135M, 128 requests
    python benchmarks/serve_load.py --model tiny:0 --requests 32       # smoke run, seconds
    python benchmarks/serve_load.py --order one-first --threads 1

The last printed line is the ratio of requests/s, batched / one-at-a-time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openai
import torch
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from protege.models import model_dir  # noqa: E402
from protege.serve import build_app  # noqa: E402

NAME = "student"
QUESTIONS = [
    "What is the capital of France?", "Name three colors.", "Write a haiku about rain.",
    "What is 17 times 3?", "Give a synonym for happy.", "Translate 'cat' to Spanish.",
    "What does CPU stand for?", "List two prime numbers.", "Why is the sky blue?",
    "What is the boiling point of water?", "Spell 'necessary' backwards.", "Who wrote Hamlet?",
    "Suggest a name for a dog.", "How many legs does a spider have?", "What is a noun?",
    "Summarize: the cat sat on the mat.",
]


@dataclass
class Load:
    """What one side measured. `answers[i]` is request i's reply (None where it failed)."""
    seconds: float
    latencies: list[float]
    answers: list[str | None]
    errors: list[str] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return len(self.latencies)

    @property
    def requests_per_s(self) -> float:
        return self.answered / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A uvicorn server in a daemon thread, for a `with` block; `url` is its /v1 base."""

    def __init__(self, app):
        self.app = app
        self.uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
        self.thread = threading.Thread(target=self.uv.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.uv.config.port}/v1"

    def __enter__(self) -> Running:
        self.thread.start()
        while not self.uv.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.uv.should_exit = True
        self.thread.join(timeout=60)


async def ask(client: openai.AsyncOpenAI, question: str, max_tokens: int) -> str:
    reply = await client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0)
    return reply.choices[0].message.content


async def load(url: str, requests: int, clients: int, max_tokens: int) -> Load:
    """`clients` workers take request numbers from one shared counter until `requests` are sent."""
    client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=3600)
    numbers = iter(range(requests))
    result = Load(0.0, [], [None] * requests)

    async def worker() -> None:
        for i in numbers:
            start = time.perf_counter()
            try:
                result.answers[i] = await ask(client, QUESTIONS[i % len(QUESTIONS)], max_tokens)
            except Exception as exc:  # counted and shown, not raised: an error is a result here
                result.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            result.latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    result.seconds = time.perf_counter() - start
    await client.close()
    return result


def run_side(directory: Path, max_batch: int, wait_ms: float, args: argparse.Namespace) -> Load:
    app = build_app(directory, model_name=NAME, max_batch=max_batch, batch_wait_ms=wait_ms)
    with Running(app) as server:
        asyncio.run(load(server.url, 1, 1, args.max_tokens))  # warm-up: first-call costs belong to no side
        sizes = app.state.server.batcher.batch_sizes
        before = len(sizes)
        result = asyncio.run(load(server.url, args.requests, args.clients, args.max_tokens))
        result.batch_sizes = sizes[before:]
    return result


def report(name: str, side: Load) -> None:
    sizes = side.batch_sizes
    mean = sum(sizes) / len(sizes) if sizes else 0.0
    print(f"{name:>14}: {side.answered} answered in {side.seconds:.1f} s = {side.requests_per_s:.2f} requests/s; "
          f"latency p50 {side.percentile(50):.2f} s, p99 {side.percentile(99):.2f} s; errors {len(side.errors)}; "
          f"{len(sizes)} batches, mean size {mean:.1f}, largest {max(sizes, default=0)}")
    for error in side.errors[:3]:
        print(f"  {error[:160]}")


def print_agreement(batched: Load, alone: Load) -> None:
    pairs = [(a, b) for a, b in zip(batched.answers, alone.answers) if a is not None and b is not None]
    same = sum(a == b for a, b in pairs)
    print(f"identical answers: {same}/{len(pairs)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct",
                        help="embedded:NAME, tiny:SEED or a model directory")
    parser.add_argument("--requests", type=int, default=128, help="chat completions sent, per side")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request")
    parser.add_argument("--max-batch", type=int, default=32, help="the batched server's max_batch")
    parser.add_argument("--wait-ms", type=float, default=10.0, help="the batched server's batching window")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--order", default="batched-first", choices=["batched-first", "one-first"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Load]:
    """Runs both sides and prints them; returns {"batched": Load, "one-at-a-time": Load}."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    directory = model_dir(args.model)
    print(f"model {args.model}, {torch.get_num_threads()} threads; {args.requests} requests from {args.clients} "
          f"clients, max_tokens {args.max_tokens}, greedy; batched: max_batch {args.max_batch}, "
          f"window {args.wait_ms:g} ms")
    sides = {"batched": (args.max_batch, args.wait_ms), "one-at-a-time": (1, 0.0)}
    order = list(sides) if args.order == "batched-first" else list(reversed(sides))
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    results = {name: run_side(directory, *sides[name], args) for name in order}
    print(f"load average after:  {os.getloadavg()[0]:.2f}  (above {args.threads}: other work shared the cores)")
    for name in sides:
        report(name, results[name])
    print_agreement(results["batched"], results["one-at-a-time"])
    ratio = results["batched"].requests_per_s / results["one-at-a-time"].requests_per_s
    print(f"ratio (batched / one-at-a-time requests/s): {ratio:.1f}x")
    return results


if __name__ == "__main__":
    main()
