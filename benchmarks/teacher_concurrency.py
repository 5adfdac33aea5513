#!/usr/bin/env python
"""Teacher concurrency: protege's OpenAI teacher with --concurrency requests in flight against the same
teacher one request at a time, side by side, on the same local endpoint.

The endpoint is tests/openai_stub.py's StubServer, run in a process of its own (so that the server's
threads and the client's event loop do not share one interpreter lock), on 127.0.0.1, answering every
request after a fixed --delay (a stand-in for a model's latency; nothing is generated). Both sides send
the same --n distinct requests through protege.teachers.openai_api.OpenAITeacher, with no cache, and
differ only in TeacherConfig.concurrency: 1 against --concurrency. Each side is timed over the whole
complete() call. Their replies are compared request for request. Load averages before and after tell
whether other work shared the cores; --order swaps which side runs first.

The delay stands in for a model that really answers in 0.3 to 10 s, which would make the one-at-a-time
side take hours. Its default, 30 ms, keeps the whole run under a minute while the concurrent side is
still bounded by the delay rather than by the client's own CPU (about 1 ms a request through the
openai client): at 20 ms the two meet, and on a busy 2-core machine the ratio drops to about 20x.

    python benchmarks/teacher_concurrency.py                         # 1,000 requests, 30 ms, 32 in flight
    python benchmarks/teacher_concurrency.py --delay 0.02            # the client's CPU starts to count
    python benchmarks/teacher_concurrency.py --n 200 --delay 0.01    # smoke run, seconds

The last printed line is the ratio of wall times, one at a time / concurrent.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))
from openai_stub import StubServer  # noqa: E402
from protege.config import TeacherConfig  # noqa: E402
from protege.teachers import TeacherRequest  # noqa: E402
from protege.teachers.openai_api import OpenAITeacher  # noqa: E402


def echo(messages: list[dict]) -> str:
    return messages[-1]["content"].upper()


def serve(delay: float, address) -> None:
    """The endpoint's process: it serves until the benchmark ends it."""
    with StubServer(echo, delay=delay) as server:
        address.send(server.base_url)
        while True:
            time.sleep(3600)


def start_server(delay: float) -> tuple[multiprocessing.Process, str]:
    here, there = multiprocessing.Pipe()
    process = multiprocessing.Process(target=serve, args=(delay, there), daemon=True)
    process.start()
    return process, here.recv()


def timed(base_url: str, concurrency: int, requests: list[TeacherRequest]) -> tuple[list, float, float]:
    """Replies, wall seconds, and the CPU seconds this (the client's) process spent."""
    cfg = TeacherConfig(kind="openai", base_url=base_url, model="stub", concurrency=concurrency, max_retries=0)
    start, cpu = time.perf_counter(), time.process_time()
    replies = OpenAITeacher(cfg).complete(requests)
    return replies, time.perf_counter() - start, time.process_time() - cpu


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="requests each side sends")
    parser.add_argument("--delay", type=float, default=0.03, help="seconds the endpoint waits before answering")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight on the concurrent side")
    parser.add_argument("--order", default="sequential-first", choices=["sequential-first", "concurrent-first"])
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    process, base_url = start_server(args.delay)
    requests = [TeacherRequest("answer", "Repeat the input in capitals.", input=f"item {i}") for i in range(args.n)]
    print(f"{args.n} requests to {base_url}, answered after {args.delay * 1000:.0f} ms each; "
          f"concurrency 1 against {args.concurrency}")
    timed(base_url, 2, requests[:4])  # connections and imports cost once, for neither side
    sides = {"one at a time": 1, "concurrent": args.concurrency}
    order = list(sides) if args.order == "sequential-first" else list(reversed(sides))
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    results = {name: timed(base_url, sides[name], requests) for name in order}
    print(f"load average after:  {os.getloadavg()[0]:.2f}  (above the cores: other work shared them)")
    process.terminate()
    for name, (replies, seconds, cpu) in results.items():
        print(f"{name:>14}: {seconds:.2f} s = {args.n / seconds:.0f} requests/s (the delay alone: "
              f"{args.delay * args.n / sides[name]:.2f} s; client CPU {cpu * 1000 / args.n:.2f} ms a request)")
    same = sum(a == b for a, b in zip(results["one at a time"][0], results["concurrent"][0]))
    answered = sum(r is not None for r in results["concurrent"][0])
    print(f"identical replies: {same}/{args.n}; answered {answered}/{args.n}")
    ratio = results["one at a time"][1] / results["concurrent"][1]
    print(f"ratio (one at a time / concurrency {args.concurrency} wall time): {ratio:.1f}x")


if __name__ == "__main__":
    main()
