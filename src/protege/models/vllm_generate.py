"""Generation with vLLM, where it is installed and the model sits on a GPU: same contract as
evaluate.generate.generate (one reply per prompt, in input order, greedy at temperature 0).

vLLM loads weights from a directory, not from a model object in memory. So generate dispatches here
only for a model that carries `WEIGHTS_DIR_ATTR`, the directory holding exactly its weights (set where
a model is loaded from a directory with nothing merged into it in memory). A LoRA student is merged
first (protege.models.save_merged) and the merged directory loaded. vllm is imported only here, only
when used. This path has not run on a GPU in protege's tests (no vllm, no GPU in CI)."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

WEIGHTS_DIR_ATTR = "protege_weights_dir"
# The student loaded by transformers stays on the GPU beside vLLM's engine and its KV cache pool.
GPU_MEMORY_SHARE = 0.5


def use_vllm(vllm_installed: bool, cuda_available: bool, model_device: str, weights: Path | None) -> bool:
    return vllm_installed and cuda_available and model_device == "cuda" and weights is not None


def weights_dir(model) -> Path | None:
    return getattr(model, WEIGHTS_DIR_ATTR, None)


def wants_vllm(model) -> bool:
    import torch
    return use_vllm(importlib.util.find_spec("vllm") is not None, torch.cuda.is_available(),
                    model.device.type, weights_dir(model))


def sampling_options(n_prompts: int, max_new_tokens: int, temperature: float, seed: int,
                     eos_token_id: int | None) -> list[dict]:
    """SamplingParams keyword arguments, one per prompt. A sampled prompt gets seed * n_prompts + its
    index: copies of one prompt (k samples for pass@k or preference pairs) differ, calls with
    different seeds draw different samples, and the same seed gives the same answers."""
    stop = [eos_token_id] if eos_token_id is not None else None
    if temperature <= 0:
        return [{"temperature": 0.0, "max_tokens": max_new_tokens, "stop_token_ids": stop}] * n_prompts
    return [{"temperature": temperature, "top_p": 1.0, "max_tokens": max_new_tokens, "stop_token_ids": stop,
             "seed": seed * n_prompts + i} for i in range(n_prompts)]


@lru_cache(maxsize=1)
def engine(directory: str):
    """One engine at a time: starting vLLM takes tens of seconds, and evaluation calls it many times
    with the same student."""
    from vllm import LLM
    return LLM(model=directory, tokenizer=directory, dtype="bfloat16", gpu_memory_utilization=GPU_MEMORY_SHARE)


def generate_vllm(directory: Path, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                  temperature: float, seed: int) -> list[str]:
    """prompts are token ids with the chat template already applied by the tokenizer, so vLLM sees
    exactly the tokens transformers would; replies are decoded by the same tokenizer."""
    if not prompts:
        return []
    from vllm import SamplingParams
    params = [SamplingParams(**options) for options in
              sampling_options(len(prompts), max_new_tokens, temperature, seed, tokenizer.eos_token_id)]
    outputs = engine(str(directory)).generate([{"prompt_token_ids": p} for p in prompts], params)
    return [tokenizer.decode(o.outputs[0].token_ids, skip_special_tokens=True).strip() for o in outputs]
