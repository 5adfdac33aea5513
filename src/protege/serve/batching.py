"""Concurrent requests generated together: one worker thread owns the model, collects the requests
that arrive within a few milliseconds of each other (or until the batch is full), groups them by
sampling settings, and runs each group as one left-padded batch, as protege.evaluate.generate does."""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from ..evaluate.generate import batch_inputs, sampling_kwargs


@dataclass
class Job:
    prompt: list[int]
    max_tokens: int
    temperature: float
    future: Future = field(default_factory=Future)


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (the model ended its reply) or "length" (max_tokens reached)


def cut_at_stop(tokens: list[int], stop_ids: set[int], max_tokens: int) -> tuple[list[int], int, str]:
    """The reply's tokens before the first stop token, how many tokens the reply used (the stop token
    counts, as in OpenAI's usage), and why it ended. Tokens after a stop are padding."""
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:i], i + 1, "stop"
    return tokens, len(tokens), "length" if len(tokens) >= max_tokens else "stop"


def stop_token_ids(model, tokenizer) -> set[int]:
    """The tokenizer's end of sequence and the model's generation_config ones (a list for some models)."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


@torch.inference_mode()
def generate_batch(model, tokenizer, prompts: list[list[int]], max_tokens: int,
                   temperature: float) -> list[Generation]:
    """One Generation per prompt, all in one forward batch (no shared-prefix cache: requests rarely
    share one, unlike an evaluation's)."""
    batch = {k: v.to(model.device) for k, v in batch_inputs(tokenizer, prompts, [], None).items()}
    stops = stop_token_ids(model, tokenizer)
    out = model.generate(**batch, max_new_tokens=max_tokens, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=sorted(stops), **sampling_kwargs(temperature))
    results = []
    for prompt, row in zip(prompts, out[:, batch["input_ids"].shape[1]:].tolist()):
        kept, used, reason = cut_at_stop(row, stops, max_tokens)
        results.append(Generation(tokenizer.decode(kept, skip_special_tokens=True), len(prompt), used, reason))
    return results


class Batcher:
    """`submit` from any thread; the answer arrives on the returned Future. `batch_sizes` records
    every batch run (tests and logs read it)."""

    def __init__(self, model, tokenizer, max_batch: int = 8, wait_ms: float = 10.0):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.wait_s = max_batch, wait_ms / 1000
        self.batch_sizes: list[int] = []
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="protege-batcher", daemon=True)
        self._worker.start()

    def submit(self, prompt: list[int], max_tokens: int, temperature: float) -> Future:
        job = Job(prompt, max_tokens, temperature)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join()

    def _collect(self, first: Job) -> list[Job]:
        """`first` and whatever else arrives before the window closes or the batch fills."""
        jobs, deadline = [first], time.monotonic() + self.wait_s
        while len(jobs) < self.max_batch:
            try:
                job = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if job is None:  # close() asked: finish this batch, then stop
                self._queue.put(None)
                break
            jobs.append(job)
        return jobs

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            groups: dict[tuple[int, float], list[Job]] = defaultdict(list)
            for job in self._collect(first):
                groups[(job.max_tokens, job.temperature)].append(job)
            for (max_tokens, temperature), jobs in groups.items():
                self._generate(jobs, max_tokens, temperature)

    def _generate(self, jobs: list[Job], max_tokens: int, temperature: float) -> None:
        self.batch_sizes.append(len(jobs))
        try:
            results = generate_batch(self.model, self.tokenizer, [j.prompt for j in jobs], max_tokens, temperature)
        except Exception as exc:  # a failed batch fails its requests, not the server
            for job in jobs:
                job.future.set_exception(exc)
            return
        for job, result in zip(jobs, results):
            job.future.set_result(result)
