"""Concurrent requests generated together: one worker thread owns the model, collects the requests
that arrive within a few milliseconds of each other (or until the batch is full), groups them by
temperature, and runs each group as one left-padded batch, as protege.evaluate.generate does.

Rows of one batch may ask for different max_tokens: the batch runs to the largest and each row is cut
at its own. Every row pays for the longest row's steps (transformers' generate keeps ended rows in the
batch) and a step's cost grows with the rows (on 2 CPU cores, a step of 32 rows measured about 5 times
one of a single row), so a short request held in a batch by a long one would cost more than running
after it: a row only joins rows whose limit is within LIMIT_SPREAD times the batch's smallest."""

from __future__ import annotations

import queue
import threading
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessorList

from ..models.forced_calls import ForcedCall, ForcedCalls
from ..models.generate import batch_inputs, sampling_kwargs

LIMIT_SPREAD = 2


@dataclass
class Job:
    prompt: list[int]
    max_tokens: int
    temperature: float
    forced: ForcedCall | None = None  # the reply must be this call (constrained decoding)
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
    return generate_rows(model, tokenizer, prompts, [max_tokens] * len(prompts), temperature)


@torch.inference_mode()
def generate_rows(model, tokenizer, prompts: list[list[int]], max_tokens: list[int],
                  temperature: float, forced: list[ForcedCall | None] | None = None) -> list[Generation]:
    """generate_batch with a max_tokens per prompt: the batch runs to the largest, each row is cut at its
    own, so a greedy row gets the reply it would get alone. A row with a ForcedCall writes that call."""
    batch = {k: v.to(model.device) for k, v in batch_inputs(tokenizer, prompts, []).items()}
    stops = stop_token_ids(model, tokenizer)
    out = model.generate(**batch, max_new_tokens=max(max_tokens), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=sorted(stops), **sampling_kwargs(temperature),
                         **constraints(forced, tokenizer, stops))
    results = []
    for prompt, limit, row in zip(prompts, max_tokens, out[:, batch["input_ids"].shape[1]:].tolist()):
        kept, used, reason = cut_at_stop(row[:limit], stops, limit)
        results.append(Generation(tokenizer.decode(kept, skip_special_tokens=True), len(prompt), used, reason))
    return results


def constraints(forced: list[ForcedCall | None] | None, tokenizer, stops: set[int]) -> dict:
    """generate's logits processor for the rows that must write a call; it ends them with the
    tokenizer's end of sequence (or another stop token)."""
    if not forced or not any(forced):
        return {}
    end = tokenizer.eos_token_id if tokenizer.eos_token_id in stops else min(stops)
    return {"logits_processor": LogitsProcessorList([ForcedCalls(forced, tokenizer, end)])}


def batches(jobs: list[Job]) -> list[list[Job]]:
    """Jobs grouped by temperature (one generate call samples at one temperature), each group split by
    max_tokens (split_by_limit)."""
    groups: dict[float, list[Job]] = defaultdict(list)
    for job in sorted(jobs, key=lambda j: j.max_tokens):
        groups[job.temperature].append(job)
    return [batch for group in groups.values() for batch in split_by_limit(group)]


def split_by_limit(jobs: list[Job]) -> list[list[Job]]:
    """Jobs in order of max_tokens, cut wherever a limit exceeds LIMIT_SPREAD times its batch's first."""
    result: list[list[Job]] = []
    for job in jobs:
        if not result or job.max_tokens > LIMIT_SPREAD * result[-1][0].max_tokens:
            result.append([])
        result[-1].append(job)
    return result


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

    def submit(self, prompt: list[int], max_tokens: int, temperature: float,
               forced: ForcedCall | None = None) -> Future:
        job = Job(prompt, max_tokens, temperature, forced)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join()

    def _collect(self, first: Job) -> list[Job]:
        """`first` and what follows it, until no request has arrived for the window or the batch is full.
        The window restarts at each arrival: clients answered by the last batch send their next requests
        one after another (each parsed and tokenized in turn), over more than one window from the first."""
        jobs = [first]
        while len(jobs) < self.max_batch:
            try:
                job = self._queue.get(timeout=self.wait_s)
            except queue.Empty:
                break
            if job is None:  # close() asked: finish this batch, then stop
                self._queue.put(None)
                break
            jobs.append(job)
        return jobs

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            for jobs in batches(self._collect(first)):
                self._generate(jobs)

    def _generate(self, jobs: list[Job]) -> None:
        self.batch_sizes.append(len(jobs))
        try:
            results = generate_rows(self.model, self.tokenizer, [j.prompt for j in jobs],
                                    [j.max_tokens for j in jobs], jobs[0].temperature, [j.forced for j in jobs])
        except Exception as exc:  # noqa: BLE001 - a failed batch fails its requests, not the server
            for job in jobs:
                job.future.set_exception(exc)
            return
        for job, result in zip(jobs, results):
            job.future.set_result(result)
