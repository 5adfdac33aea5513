"""Batched generation gives the per-item answers, in order; sampling is seeded; vLLM only where it can run."""

from pathlib import Path

import pytest
import torch

from protege.models.generate import chat_prompts, generate, shared_prefix
from protege.models.vllm_generate import WEIGHTS_DIR_ATTR, sampling_options, use_vllm, wants_vllm
from protege.models import load_model
from protege.models.tiny import build_tiny

INSTRUCTION = "Answer with one word."
QUESTIONS = ["hi", "What is the capital of France?", "2+2?", "Name a colour that is not blue or red.",
             "ok", "Why is the sky blue, in one short sentence please?", "x"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model whose greedy answers depend on the prompt: at its initial scale (std 0.02) it
    answers the same token to everything, and a test of order and batching would prove nothing."""
    model, tokenizer = load_model(build_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=3), "cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for weight in (p for p in model.parameters() if p.dim() > 1):
            weight.normal_(0, 0.3)
    return model, tokenizer


def task_chats(questions: list[str]) -> list[list[dict]]:
    return [[{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": q}] for q in questions]


def per_item_loop(model, tokenizer, chats, max_new_tokens: int) -> list[str]:
    """The plain way: one model.generate per prompt, no padding, no shared cache."""
    replies = []
    for prompt in chat_prompts(tokenizer, chats):
        ids = torch.tensor([prompt])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, temperature=None, top_p=None, top_k=None,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        replies.append(tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True).strip())
    return replies


def test_shared_prefix_keeps_one_token_of_each_prompt():
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 5]]) == [1, 2]
    assert shared_prefix([[1, 2, 3], [1, 2, 3]]) == [1, 2]
    assert shared_prefix([[1, 2, 3], [1, 2]]) == [1]
    assert shared_prefix([[7, 2], [8, 2]]) == []
    assert shared_prefix([[1, 2, 3]]) == []


@pytest.mark.parametrize("chats", [task_chats(QUESTIONS),
                                   [[{"role": "user", "content": q}] for q in QUESTIONS[:4]]
                                   + task_chats(QUESTIONS[4:])],
                         ids=["one-instruction", "mixed-instructions"])
def test_batched_greedy_equals_per_item_loop(tiny, chats):
    model, tokenizer = tiny
    expected = per_item_loop(model, tokenizer, chats, max_new_tokens=12)
    assert len(set(expected)) > 1  # otherwise the order of the replies would go untested
    assert generate(model, tokenizer, chats, max_new_tokens=12, batch_size=3) == expected


def test_sampling_is_seeded(tiny):
    model, tokenizer = tiny
    chats = task_chats(QUESTIONS[:3]) * 2
    first = generate(model, tokenizer, chats, max_new_tokens=10, batch_size=4, temperature=1.0, seed=5)
    assert generate(model, tokenizer, chats, max_new_tokens=10, batch_size=4, temperature=1.0, seed=5) == first
    assert generate(model, tokenizer, chats, max_new_tokens=10, batch_size=4, temperature=1.0, seed=6) != first
    assert first[:3] != first[3:]  # the two copies of each chat are sampled apart


def test_no_chats_no_replies(tiny):
    assert generate(*tiny, []) == []


def test_vllm_needs_vllm_a_gpu_the_model_on_it_and_its_weights_directory(tmp_path):
    assert use_vllm(True, True, "cuda", tmp_path)
    assert not use_vllm(False, True, "cuda", tmp_path)
    assert not use_vllm(True, False, "cuda", tmp_path)
    assert not use_vllm(True, True, "cpu", tmp_path)
    assert not use_vllm(True, True, "cuda", None)


def test_generate_stays_on_transformers_without_vllm_or_gpu(tiny, tmp_path):
    model, tokenizer = tiny
    setattr(model, WEIGHTS_DIR_ATTR, Path(tmp_path))
    try:
        assert not wants_vllm(model)
        assert generate(model, tokenizer, task_chats(["hi"]), max_new_tokens=4) == \
            per_item_loop(model, tokenizer, task_chats(["hi"]), 4)
    finally:
        delattr(model, WEIGHTS_DIR_ATTR)


def test_vllm_sampling_options():
    greedy = sampling_options(2, max_new_tokens=16, temperature=0.0, seed=3, eos_token_id=9)
    assert greedy == [{"temperature": 0.0, "max_tokens": 16, "stop_token_ids": [9]}] * 2
    sampled = sampling_options(3, max_new_tokens=8, temperature=0.7, seed=2, eos_token_id=9)
    assert [o["seed"] for o in sampled] == [6, 7, 8]
    assert {o["temperature"] for o in sampled} == {0.7}
    assert [o["seed"] for o in sampling_options(3, 8, 0.7, 3, 9)] == [9, 10, 11]
