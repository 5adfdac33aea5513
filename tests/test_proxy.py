"""Proxy-tuning decode: the combination step against hand-computed numbers, the cached decoding loop against
full forward passes, the vocabulary check, and the served route through the real openai client."""

from __future__ import annotations

import math
import socket
import threading
import time

import openai
import pytest
import torch
import uvicorn
from transformers import AutoModelForCausalLM, AutoTokenizer

from protege.models.generate import batch_inputs, chat_prompts
from protege.models import load_model
from protege.models.tiny import build_tiny
from protege.serve import build_app
from protege.serve.batching import generate_batch
from protege.serve.proxy import (ProxyModel, ProxySpec, VocabularyMismatch, load_proxy, pick_next,
                                 position_ids, proxy_scores, sampling_warpers)

CHATS = [[{"role": "user", "content": "hi"}],
         [{"role": "user", "content": "name three colours of the sea"}]]
STEPS = 6


def varied_tiny(directory, seed: int, hidden: int = 64):
    """build_tiny's init (std 0.02) gives near-uniform logits, so every model would pick the same tokens;
    weights of std 0.3 make the three models disagree and the proxy's choice depend on all three."""
    return build_tiny(directory, seed=seed, hidden=hidden, weight_std=0.3)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A wider BIG and a small EXPERT / ANTI pair: sizes differ, the vocabulary is shared."""
    return {"big": varied_tiny(tmp_path_factory.mktemp("big"), seed=1, hidden=128),
            "expert": varied_tiny(tmp_path_factory.mktemp("expert"), seed=2),
            "anti": varied_tiny(tmp_path_factory.mktemp("anti"), seed=3)}


@pytest.fixture(scope="module")
def batch(dirs):
    """Two chat prompts of different lengths, left-padded as the server's batcher pads them."""
    _, tokenizer = load_model(dirs["big"])
    prompts = chat_prompts(tokenizer, CHATS)
    assert len(prompts[0]) != len(prompts[1])
    return batch_inputs(tokenizer, prompts, []), tokenizer


def test_scores_combine_log_probabilities_by_hand():
    # big uniform: log(1/2) each; expert p = (3/4, 1/4); anti p = (1/4, 3/4)
    big, expert, anti = torch.tensor([0.0, 0.0]), torch.tensor([math.log(3), 0.0]), torch.tensor([0.0, math.log(3)])
    # alpha 1: -log 2 + log(3/4) - log(1/4) = log(3/2); -log 2 + log(1/4) - log(3/4) = -log 6
    assert torch.allclose(proxy_scores(big, expert, anti), torch.tensor([math.log(1.5), -math.log(6)]))
    # softmax of (log 3/2, -log 6) is (3/2, 1/6) / (5/3) = (0.9, 0.1)
    assert torch.allclose(torch.softmax(proxy_scores(big, expert, anti), -1), torch.tensor([0.9, 0.1]))
    # alpha 1/2: exp(scores) is proportional to (sqrt 3, 1/sqrt 3), i.e. (3/4, 1/4)
    half = torch.softmax(proxy_scores(big, expert, anti, alpha=0.5), -1)
    assert torch.allclose(half, torch.tensor([0.75, 0.25]))


def test_scores_ignore_each_models_logit_offset():
    """Log-probabilities make a model's constant logit shift vanish, so the distribution equals the one
    the paper's code gets from raw logits."""
    torch.manual_seed(0)
    big, expert, anti = torch.randn(3, 2, 7).unbind(0)
    shifted = proxy_scores(big + 4.0, expert - 2.5, anti + 9.0, alpha=2.0)
    assert torch.allclose(shifted, proxy_scores(big, expert, anti, alpha=2.0), atol=1e-5)
    raw = torch.softmax(big + 2.0 * (expert - anti), -1)
    assert torch.allclose(torch.softmax(shifted, -1), raw, atol=1e-6)


def test_pick_next_greedy_and_sampled_frequencies():
    scores = torch.tensor([[0.0, math.log(3)]]).repeat(20_000, 1)
    assert pick_next(scores[:2], None).tolist() == [1, 1]
    torch.manual_seed(0)
    # temperature 1: p = (1, 3) / 4; temperature 2: p proportional to (1, sqrt 3)
    assert pick_next(scores, sampling_warpers(1.0, None, 1.0)).float().mean() == pytest.approx(0.75, abs=0.01)
    hot = pick_next(scores, sampling_warpers(2.0, None, 1.0)).float().mean()
    assert hot == pytest.approx(math.sqrt(3) / (1 + math.sqrt(3)), abs=0.01)
    # top_k 1 keeps only the best token whatever the temperature
    assert pick_next(scores[:50], sampling_warpers(2.0, 1, None)).tolist() == [1] * 50


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def full_forward_greedy(models, batch, alpha: float, steps: int, pad: int, eos: list[int]) -> torch.Tensor:
    """The proxy decode done the slow, obvious way: the whole sequence through every model at every step,
    raw logits combined as in the paper's code."""
    tokens, mask = batch["input_ids"], batch["attention_mask"]
    running = torch.ones(len(tokens), dtype=torch.bool)
    for _ in range(steps):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        big, expert, anti = (m(input_ids=tokens, attention_mask=mask, position_ids=positions).logits[:, -1]
                             for m in models)
        chosen = torch.where(running, (big + alpha * (expert - anti)).argmax(-1), pad)
        running &= ~torch.isin(chosen, torch.tensor(eos))
        tokens = torch.cat([tokens, chosen[:, None]], 1)
        mask = torch.cat([mask, torch.ones(len(mask), 1, dtype=mask.dtype)], 1)
    return tokens


@torch.inference_mode()
def test_cached_greedy_equals_full_forward_argmax(dirs, batch):
    inputs, tokenizer = batch
    proxy, _ = load_proxy(dirs["big"], dirs["expert"], dirs["anti"], alpha=2.0)
    got = proxy.generate(**inputs, max_new_tokens=STEPS, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, do_sample=False)
    want = full_forward_greedy(proxy.models, inputs, 2.0, STEPS, tokenizer.pad_token_id, [tokenizer.eos_token_id])
    assert got.tolist() == want[:, :got.shape[1]].tolist()
    alone = proxy.models[0].generate(**inputs, max_new_tokens=STEPS, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
    assert got.tolist() != alone.tolist(), "expert - anti should steer BIG here, or the test proves nothing"


@torch.inference_mode()
def test_rows_end_at_eos_and_decoding_stops_when_all_have(dirs, batch):
    inputs, tokenizer = batch
    pad, start = tokenizer.pad_token_id, inputs["input_ids"].shape[1]
    proxy, _ = load_proxy(dirs["big"], dirs["expert"], dirs["anti"], alpha=2.0)
    free = proxy.generate(**inputs, max_new_tokens=STEPS, pad_token_id=pad, eos_token_id=[])[:, start:]
    # row 0's second token made an end token: row 0 ends there, the other row goes on
    stop = [free[0, 1].item()]
    got = proxy.generate(**inputs, max_new_tokens=STEPS, pad_token_id=pad, eos_token_id=stop)
    assert got.tolist() == full_forward_greedy(proxy.models, inputs, 2.0, STEPS, pad, stop).tolist()
    assert got[0, start + 2:].tolist() == [pad] * (STEPS - 2)
    # every row's first token an end token: one step, then nothing left to decode
    first = proxy.generate(**inputs, max_new_tokens=STEPS, pad_token_id=pad, eos_token_id=free[:, 0].tolist())
    assert first[:, start:].tolist() == free[:, :1].tolist()


@torch.inference_mode()
def test_expert_equal_to_anti_decodes_as_big_alone(dirs, batch):
    inputs, tokenizer = batch
    proxy, _ = load_proxy(dirs["big"], dirs["anti"], dirs["anti"], alpha=3.0)
    options = dict(max_new_tokens=STEPS, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                   do_sample=False)
    assert proxy.generate(**inputs, **options).tolist() == proxy.models[0].generate(**inputs, **options).tolist()


@torch.inference_mode()
def test_expert_may_be_a_lora_adapter_on_anti(dirs, batch, tmp_path):
    """A LoRA adapter trained on ANTI (as `protege train` saves one) serves as the expert, merged into ANTI."""
    from peft import LoraConfig, get_peft_model

    inputs, tokenizer = batch
    anti, _ = load_model(dirs["anti"])
    tuned = get_peft_model(anti, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    tuned.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    want = tuned(**inputs).logits
    proxy, _ = load_proxy(dirs["big"], tmp_path, dirs["anti"])
    got = proxy.models[1](**inputs).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, proxy.models[2](**inputs).logits, atol=1e-2)


def odd_tokenizer(directory):
    """A tiny model whose tokenizer has one token more than the others'."""
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.add_tokens(["<extra>"])
    model = AutoModelForCausalLM.from_pretrained(directory)
    model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


def padded_vocabulary(directory):
    """The same tokenizer, but a model that scores 8 padding tokens past its end."""
    model = AutoModelForCausalLM.from_pretrained(directory)
    model.resize_token_embeddings(model.config.vocab_size + 8)
    return model, AutoTokenizer.from_pretrained(directory)


@pytest.mark.parametrize("make, message", [(odd_tokenizer, "tokenizer of the expert"),
                                           (padded_vocabulary, "the expert .* scores 267 tokens")])
def test_vocabulary_mismatch_is_refused(dirs, tmp_path, make, message):
    model, tokenizer = make(dirs["expert"])
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(VocabularyMismatch, match=message):
        load_proxy(dirs["big"], tmp_path, dirs["anti"])


def test_context_is_the_shortest_of_the_three(dirs):
    proxy, _ = load_proxy(dirs["big"], dirs["expert"], dirs["anti"])
    proxy.models[1].config.max_position_embeddings = 100
    assert ProxyModel(*proxy.models).config.max_position_embeddings == 100
    assert proxy.models[0].config.max_position_embeddings == 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_chat_completion_is_the_proxy_decode(dirs):
    spec = ProxySpec(dirs["big"], dirs["expert"], dirs["anti"], alpha=1.5)
    app = build_app(proxy=spec, max_tokens_limit=16)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.02)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{uv.config.port}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model=spec.name, messages=CHATS[1], max_tokens=8, temperature=0)
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
    server = app.state.server
    assert isinstance(server.model, ProxyModel) and server.model.alpha == 1.5
    prompt = chat_prompts(server.tokenizer, [CHATS[1]])[0]
    direct = generate_batch(server.model, server.tokenizer, [prompt], 8, 0.0)[0]
    assert answer.choices[0].message.content == direct.text
    assert answer.usage.completion_tokens == direct.completion_tokens
    assert answer.model == f"{dirs['big'].name}+{dirs['expert'].name}"
