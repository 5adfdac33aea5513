"""Batched generation: prompts sorted by length, left padding, KV cache, one progress bar. The part
every prompt shares (chat template and task instruction, about half of each prompt in an evaluation)
is encoded once. Where vLLM is installed and the model sits on a GPU, vLLM generates instead."""

from __future__ import annotations

import os
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import StaticCache

from ..records import task_chat
from . import vllm_generate


def chat_prompts(tokenizer, chats: list[list[dict]], tools: list[dict] | None = None) -> list[list[int]]:
    """tools: the tool schemas a template that renders tools is given (models.chat_format decides)."""
    extra = {"tools": tools} if tools else {}
    return [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False, **extra)
            for c in chats]


def shared_prefix(prompts: list[list[int]]) -> list[int]:
    """The tokens every prompt starts with, cut so that each prompt keeps at least one token of its
    own: generate needs a token to feed after the cached ones."""
    if len(prompts) < 2:
        return []
    return os.path.commonprefix(prompts)[:min(len(p) for p in prompts) - 1]


def sampling_kwargs(temperature: float) -> dict:
    if temperature > 0:
        return {"do_sample": True, "temperature": temperature, "top_p": 1.0}
    return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def prefix_cache(model, prefix: list[int]):
    """The KV cache of the shared prefix, computed once for every batch."""
    if not prefix:
        return None
    return model(input_ids=torch.tensor([prefix], device=model.device), use_cache=True).past_key_values


def static_cache(model, prefix_kv, rows: int, length: int) -> StaticCache:
    """A cache of `length` positions for `rows` rows that starts with the shared prefix. Decoding
    writes each step in place; a dynamic cache concatenates, copying every layer's whole cache at
    every step, which on long prompts (an agent's episode) costs more than the model itself."""
    cache = StaticCache(config=model.config, max_cache_len=length)
    for layer, shared in zip(cache.layers, prefix_kv.layers if prefix_kv is not None else []):
        layer.update(shared.keys.expand(rows, -1, -1, -1), shared.values.expand(rows, -1, -1, -1))
    return cache


def batch_inputs(tokenizer, prompts: list[list[int]], prefix: list[int]) -> dict:
    """The shared prefix, then each prompt's own tokens left-padded: padding sits between the two, and
    the attention mask hides it (generate derives position ids from the mask, so positions stay right)."""
    own = tokenizer.pad({"input_ids": [p[len(prefix):] for p in prompts]}, padding_side="left",
                        return_tensors="pt")
    rows = len(prompts)
    batch = {"input_ids": torch.cat([torch.tensor([prefix] * rows, dtype=torch.long),
                                     own["input_ids"]], dim=1),
             "attention_mask": torch.cat([torch.ones(rows, len(prefix), dtype=torch.long),
                                          own["attention_mask"]], dim=1)}
    return batch


@torch.inference_mode()
def generate(model, tokenizer, chats: list[list[dict]], max_new_tokens: int = 32, batch_size: int = 32,
             temperature: float = 0.0, seed: int = 0, desc: str = "generate",
             tools: list[dict] | None = None) -> list[str]:
    """One reply per chat, in the order given. Sorting by length keeps padding (wasted work) small;
    generate stops a batch as soon as every row has ended."""
    prompts = chat_prompts(tokenizer, chats, tools)
    if vllm_generate.wants_vllm(model):
        return vllm_generate.generate_vllm(vllm_generate.weights_dir(model), tokenizer, prompts,
                                           max_new_tokens, temperature, seed)
    prefix = shared_prefix(prompts)
    cache = prefix_cache(model, prefix)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[str] = [""] * len(prompts)
    torch.manual_seed(seed)
    with tqdm(total=len(prompts), desc=desc, unit="item", leave=False) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = {k: v.to(model.device) for k, v in batch_inputs(tokenizer, [prompts[i] for i in chunk],
                                                                     prefix).items()}
            rows, length = batch["input_ids"].shape
            out = model.generate(**batch, past_key_values=static_cache(model, cache, rows, length + max_new_tokens),
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **sampling_kwargs(temperature))
            for i, row in zip(chunk, out[:, batch["input_ids"].shape[1]:]):
                replies[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
            bar.update(len(chunk))
    return replies


def sample_student(model, tokenizer, chats: list[list[dict]], k: int, temperature: float, max_new_tokens: int,
                   seed: int, batch_size: int = 32) -> list[list[str]]:
    """k sampled answers per chat. The chats are repeated k times in one generate call rather than
    generated k times: generate sorts prompts by length, so the k copies of a prompt share batches
    with no padding between them, and the batches stay full even when there are few chats."""
    if temperature <= 0:  # greedy decoding gives k equal answers: generate them once
        return [[reply] * k for reply in generate(model, tokenizer, chats, max_new_tokens, batch_size,
                                                  seed=seed, desc="sample")]
    repeated = [chat for chat in chats for _ in range(k)]
    replies = generate(model, tokenizer, repeated, max_new_tokens, batch_size, temperature=temperature,
                       seed=seed, desc="sample")
    return [replies[i * k:(i + 1) * k] for i in range(len(chats))]


def sample_answers(model, tokenizer, instruction: str, items: Sequence[tuple[str, str | None]], k: int,
                   temperature: float, max_new_tokens: int, seed: int) -> list[list[str]]:
    """k answers of a student per (input, reference) item, sampled on the prompt it sees in training."""
    chats = [task_chat(instruction, text) for text, _ in items]
    return sample_student(model, tokenizer, chats, k, temperature, max_new_tokens, seed)
