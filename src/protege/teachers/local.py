"""A Hugging Face model as the teacher, run in this process: requests are generated in batches by
models.generate (transformers), or by vLLM where vllm is installed and a GPU is there. The model
loads only when a request misses the cache.

An agent's step (purpose "act") is taken as the student takes it in evaluation (models.acting): the
episode rendered with its tools for the model's chat template, the generated text parsed back into
tool calls. vLLM is given the same prompt tokens. A turn with neither text nor a tool call, or with a
tool call that could not be read, is dropped (None, counted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import Field

from ..config import TeacherConfig
from ..models import vllm_generate
from ..models.acting import act_prompts, agent_chat, parsed_turns
from ..models.chat_format import MALFORMED_JSON, ParsedTurn
from ..registry import TEACHER
from ..runs import digest
from .base import TeacherRequest, TeacherStats, Usage, act_reply


class LocalTeacherConfig(TeacherConfig):
    kind: Literal["local"] = Field("local", description="A Hugging Face model run in this process (vLLM where "
                                   "installed and a GPU is there); in agent tasks it acts with the tools as the "
                                   "student does.")
    model: str = Field("", description="embedded:NAME, tiny:SEED or a local Hugging Face model directory.")
    batch_size: int = Field(16, gt=0, description="Requests generated together; each batch is cached as it "
                            "finishes.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the model runs; auto: a GPU when "
                                                   "one is there.")


def batches(requests: list[TeacherRequest], size: int) -> list[list[int]]:
    """Indices of requests that can share one generate call (same temperature and sample seed; agent
    steps apart from other requests, and only with steps offered the same tools), at most `size` each,
    in the order the requests came."""
    groups: dict[tuple, list[int]] = {}
    for i, request in enumerate(requests):
        acting = request.purpose == "act"
        groups.setdefault((request.temperature, request.sample, acting, request.tools if acting else ""),
                          []).append(i)
    return [group[k:k + size] for group in groups.values() for k in range(0, len(group), size)]


def turn_reply(turn: ParsedTurn) -> str | None:
    """A generated turn as act_reply's JSON. None when it says nothing, or when a tool call the model
    wrote could not be read: its text alone would pass for a final answer the model never meant."""
    return None if turn.counts[MALFORMED_JSON] else act_reply(turn.message)


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

    @property
    def label(self) -> str:
        return f"local {self.cfg.model}"

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

    def _generate(self, chats: list[list[dict]], temperature: float, seed: int,
                  tools: list[dict] | None = None) -> tuple[list[str], list[int]]:
        """Replies and prompt lengths of one batch; tools: what the chat template is given."""
        from ..models.generate import chat_prompts, generate  # torch: not when protege loads this file
        model, tokenizer = self._load()
        prompts = chat_prompts(tokenizer, chats, tools)
        if model is None:
            replies = vllm_generate.generate_vllm(self.directory, tokenizer, prompts, self.cfg.max_tokens,
                                                  temperature, seed)
        else:
            replies = generate(model, tokenizer, chats, max_new_tokens=self.cfg.max_tokens, batch_size=len(chats),
                               temperature=temperature, seed=seed, desc="local teacher", tools=tools)
        return replies, [len(p) for p in prompts]

    def complete(self, requests: list[TeacherRequest], on_reply=None) -> list[str | None]:
        self.stats.requests += len(requests)
        self.stats.paid += len(requests)
        replies: list[str | None] = [None] * len(requests)
        for batch in batches(requests, self.cfg.batch_size):
            answer = self._act if requests[batch[0]].purpose == "act" else self._answer
            for i, (text, reply, prompt_length) in zip(batch, answer([requests[i] for i in batch])):
                replies[i], usage = self._reply(text, reply, prompt_length)
                if on_reply:
                    on_reply(i, replies[i], usage)
        return replies

    def _answer(self, batch: list[TeacherRequest]) -> list[tuple[str, str, int]]:
        """(generated text, reply, prompt length) of each request: the reply is the text."""
        texts, prompt_lengths = self._generate([r.chat() for r in batch], batch[0].temperature, batch[0].sample)
        return [(text, text.strip(), length) for text, length in zip(texts, prompt_lengths)]

    def _act(self, batch: list[TeacherRequest]) -> list[tuple[str, str | None, int]]:
        """Agent steps offered the same tools: the reply is the parsed turn as act_reply's JSON."""
        tools = batch[0].tool_schemas()
        episodes = [agent_chat(r.instruction, r.messages()) for r in batch]
        chats, template_tools = act_prompts(episodes, tools, self._load()[1])
        texts, prompt_lengths = self._generate(chats, batch[0].temperature, batch[0].sample, template_tools)
        turns = parsed_turns(texts, episodes, tools)
        return [(text, turn_reply(turn), length) for text, turn, length in zip(texts, turns, prompt_lengths)]

    def _reply(self, text: str, reply: str | None, prompt_length: int) -> tuple[str | None, Usage]:
        """An empty generation, or a turn with neither text nor a tool call, is dropped (counted), never
        returned as data."""
        if not reply:
            self.stats.drop("empty generation" if not text.strip() else "unreadable turn")
            return None, Usage()
        usage = Usage(prompt_length, len(self._load()[1].encode(text, add_special_tokens=False)))
        self.stats.charge(usage)
        return reply, usage


@TEACHER.register(LocalTeacherConfig)
def build(cfg: LocalTeacherConfig, task_dir: Path, student=None) -> LocalTeacher:
    return LocalTeacher(cfg, task_dir)
