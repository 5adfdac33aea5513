"""A Hugging Face model as the teacher, run in this process: requests are generated in batches by
evaluate.generate (transformers), or by vLLM where vllm is installed and a GPU is there. The model
loads only when a request misses the cache."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import Field

from ..config import TeacherConfig
from ..models import vllm_generate
from ..registry import TEACHER
from ..runs import digest
from .base import TeacherRequest, TeacherStats, Usage


class LocalTeacherConfig(TeacherConfig):
    kind: Literal["local"] = Field("local", description="A Hugging Face model run in this process (vLLM where "
                                   "installed and a GPU is there).")
    model: str = Field("", description="embedded:NAME, tiny:SEED or a local Hugging Face model directory.")
    batch_size: int = Field(16, gt=0, description="Requests generated together; each batch is cached as it "
                            "finishes.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the model runs; auto: a GPU when "
                                                   "one is there.")


def batches(requests: list[TeacherRequest], size: int) -> list[list[int]]:
    """Indices of requests that can share one generate call (same temperature and sample seed), at
    most `size` each, in the order the requests came."""
    groups: dict[tuple, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault((request.temperature, request.sample), []).append(i)
    return [group[k:k + size] for group in groups.values() for k in range(0, len(group), size)]


def weights_identity(directory: Path) -> str:
    """The model's config and the names and sizes of its weight files: a retrained or replaced model
    gets a new cache identity without hashing gigabytes on every run."""
    weights = sorted((p.name, p.stat().st_size) for p in directory.glob("*.safetensors"))
    return digest([(directory / "config.json").read_text(), weights])


class LocalTeacher:
    name = "local"

    def __init__(self, cfg: LocalTeacherConfig, task_dir: Path | None = None):
        from ..models import model_dir, pick_device
        if not cfg.model:
            raise ValueError("teacher.model (embedded:NAME, tiny:SEED or a model directory) is required "
                             "for kind=local")
        self.cfg = cfg
        self.directory = model_dir(cfg.model, task_dir)
        self.device = pick_device(cfg.device)
        self.stats = TeacherStats()
        self._loaded = None

    def identity(self) -> str:
        return f"local:{self.cfg.model}@{weights_identity(self.directory)}"

    def uses_vllm(self) -> bool:
        import torch
        return vllm_generate.use_vllm(importlib.util.find_spec("vllm") is not None, torch.cuda.is_available(),
                                      self.device, self.directory)

    def _load(self) -> tuple:
        """(model, tokenizer); with vLLM the model is vLLM's engine, so only the tokenizer loads here."""
        if self._loaded is None:
            from ..models import load_model
            if self.uses_vllm():
                from transformers import AutoTokenizer
                self._loaded = (None, AutoTokenizer.from_pretrained(self.directory))
            else:
                self._loaded = load_model(self.directory, self.device)
        return self._loaded

    def _generate(self, chats: list[list[dict]], temperature: float, seed: int) -> tuple[list[str], list[int]]:
        """Replies and prompt lengths of one batch."""
        from ..models.generate import chat_prompts, generate  # torch: not when protege loads this file
        model, tokenizer = self._load()
        prompts = chat_prompts(tokenizer, chats)
        if model is None:
            replies = vllm_generate.generate_vllm(self.directory, tokenizer, prompts, self.cfg.max_tokens,
                                                  temperature, seed)
        else:
            replies = generate(model, tokenizer, chats, max_new_tokens=self.cfg.max_tokens, batch_size=len(chats),
                               temperature=temperature, seed=seed, desc="local teacher")
        return replies, [len(p) for p in prompts]

    def complete(self, requests: list[TeacherRequest], on_reply=None) -> list[str | None]:
        self.stats.requests += len(requests)
        self.stats.paid += len(requests)
        replies: list[str | None] = [None] * len(requests)
        for batch in batches(requests, self.cfg.batch_size):
            first = requests[batch[0]]
            texts, prompt_lengths = self._generate([requests[i].chat() for i in batch], first.temperature,
                                                   first.sample)
            for i, text, prompt_length in zip(batch, texts, prompt_lengths):
                replies[i], usage = self._reply(text, prompt_length)
                if on_reply:
                    on_reply(i, replies[i], usage)
        return replies

    def _reply(self, text: str, prompt_length: int) -> tuple[str | None, Usage]:
        """An empty generation is dropped (counted), never returned as data."""
        if not text.strip():
            self.stats.failed += 1
            self.stats.dropped += 1
            return None, Usage()
        usage = Usage(prompt_length, len(self._load()[1].encode(text, add_special_tokens=False)))
        self.stats.charge(usage)
        return text.strip(), usage


@TEACHER.register(LocalTeacherConfig)
def build(cfg: LocalTeacherConfig, task_dir: Path, student=None) -> LocalTeacher:
    return LocalTeacher(cfg, task_dir)
