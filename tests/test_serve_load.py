"""The serving load benchmark on a tiny model, and the batcher's grouping: rows with different max_tokens
share a batch and each gets the reply it would get alone; the batching window restarts at each arrival."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest
from test_serve import varied_tiny

from protege.models.generate import chat_prompts
from protege.models import load_model
from protege.serve.batching import Batcher, Job, batches, generate_batch

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = 12


def load_benchmark():
    """benchmarks/ is not a package: the script is loaded from its path (and registered, as its
    dataclasses need their module in sys.modules)."""
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(varied_tiny(tmp_path_factory.mktemp("varied")), "cpu")


def test_load_benchmark_answers_every_request_without_errors(capsys):
    # a wide window so that the batched side surely batches
    results = load_benchmark().main(["--model", "tiny:0", "--requests", str(REQUESTS), "--clients", "4",
                                     "--max-tokens", "6", "--threads", "1", "--wait-ms", "200"])
    for name, side in results.items():
        assert side.errors == [] and side.answered == REQUESTS, name
        assert None not in side.answers and sum(side.batch_sizes) == REQUESTS
        assert 0 < side.percentile(50) <= side.percentile(99) <= side.seconds
    assert results["one-at-a-time"].batch_sizes == [1] * REQUESTS
    assert max(results["batched"].batch_sizes) > 1
    ratio = results["batched"].requests_per_s / results["one-at-a-time"].requests_per_s
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"ratio (batched / one-at-a-time requests/s): {ratio:.1f}x"
    assert f"identical answers: {REQUESTS}/{REQUESTS}" in lines


def job(max_tokens: int, temperature: float = 0.0) -> Job:
    return Job([1], max_tokens, temperature)


def test_batches_group_by_temperature_and_keep_limits_within_twice_the_smallest():
    jobs = [job(16), job(8), job(64), job(10, 0.7), job(17), job(32)]
    grouped = [[(j.max_tokens, j.temperature) for j in batch] for batch in batches(jobs)]
    assert grouped == [[(8, 0.0), (16, 0.0)], [(17, 0.0), (32, 0.0)], [(64, 0.0)], [(10, 0.7)]]


def test_rows_with_different_max_tokens_share_a_batch_and_get_their_answers_alone(tiny):
    model, tokenizer = tiny
    questions = ["a", "what is 2+2?", "tell me about cats", "hello", "one two three"]
    limits = [4, 8, 5, 7, 6]
    prompts = chat_prompts(tokenizer, [[{"role": "user", "content": q}] for q in questions])
    alone = [generate_batch(model, tokenizer, [p], limit, 0.0)[0] for p, limit in zip(prompts, limits)]
    assert len({a.completion_tokens for a in alone}) > 1  # rows were cut at different lengths
    batcher = Batcher(model, tokenizer, max_batch=8, wait_ms=500)
    try:
        futures = [batcher.submit(p, limit, 0.0) for p, limit in zip(prompts, limits)]
        together = [f.result(timeout=60) for f in futures]
    finally:
        batcher.close()
    assert batcher.batch_sizes == [len(prompts)]
    assert together == alone


def test_the_window_restarts_at_each_arrival(tiny):
    """Four requests 0.15 s apart span 0.45 s, more than the 0.3 s window, yet no gap reaches it."""
    model, tokenizer = tiny
    batcher = Batcher(model, tokenizer, max_batch=8, wait_ms=300)
    try:
        futures = []
        for _ in range(4):
            futures.append(batcher.submit([5, 6, 7], 2, 0.0))
            time.sleep(0.15)
        for future in futures:
            future.result(timeout=60)
    finally:
        batcher.close()
    assert batcher.batch_sizes == [4]
