"""The prefix a batch's examples share is computed once: the same loss and gradients as every
example carrying its own copy, and no sharing where a label would lose its context."""

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from protege.models import model_dir
from protege.train.packed_attention import register, shared_prefix_segments
from protege.train.shared_prefix import SharedPrefixCollator, shared_length

TINY = model_dir("tiny:0")
PREFIX = list(range(30, 50))  # 20 tokens every example starts with (a system message)


def example(own: list[int], labeled_from: int) -> dict:
    ids = PREFIX + own
    return {"input_ids": ids, "labels": [-100 if i < len(PREFIX) + labeled_from else t for i, t in enumerate(ids)]}


EXAMPLES = [example([60, 61, 62, 63, 64], 2), example([70, 71, 72], 1), example([80, 81, 82, 83, 84, 85, 86], 3)]


def test_shared_length_stops_before_the_first_label_and_where_the_examples_differ():
    assert shared_length(EXAMPLES) == 20
    # a label right after the common part: the prefix gives back a token, so no label follows it
    early = [example([60, 61], 0), example([60, 62], 0)]
    assert shared_length(early) == 19
    assert shared_length(EXAMPLES[:1]) == 0  # one example: nothing to share
    short = [{"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}] * 2
    assert shared_length(short) == 0  # too short to pay


def test_the_row_holds_the_prefix_once_and_positions_go_on_from_it():
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    batch = SharedPrefixCollator(collator)(EXAMPLES)
    assert batch["input_ids"].shape[1] == 20 + 5 + 3 + 7
    assert batch["position_ids"][0, 25:28].tolist() == [20, 21, 22]
    assert "cu_seq_lens_q" not in batch
    assert shared_prefix_segments(batch["position_ids"]) == [(0, 25, 0), (25, 28, 20), (28, 35, 20)]
    # a row of TRL's own (positions restart at 0) is no shared layout
    assert shared_prefix_segments(collator(EXAMPLES)["position_ids"]) is None


def loss_and_grads(batch: dict) -> tuple[float, dict]:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(TINY, attn_implementation=register())
    loss = model(**batch, use_cache=False).loss
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_sharing_gives_the_loss_and_gradients_of_separate_copies():
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    copies, shared = loss_and_grads(collator(EXAMPLES)), loss_and_grads(SharedPrefixCollator(collator)(EXAMPLES))
    assert shared[0] == pytest.approx(copies[0], rel=1e-5)
    assert shared[1].keys() == copies[1].keys()
    for name, grad in copies[1].items():
        assert torch.allclose(shared[1][name], grad, atol=1e-6, rtol=1e-4), name


def test_a_batch_mixing_in_examples_without_the_prefix_still_shares_it():
    """A mixture's general examples among an agent's episodes: they go last, whole, and the loss and
    gradients are still those of separate copies."""
    general = [{"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, 7, 8, 9, 10]},
               {"input_ids": [90, 91, 92], "labels": [-100, 91, 92]}]
    mixed = [general[0], EXAMPLES[0], EXAMPLES[1], general[1], EXAMPLES[2]]
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    batch = SharedPrefixCollator(collator)(mixed)
    assert batch["input_ids"].shape[1] == 20 + 5 + 3 + 7 + 6 + 3
    assert shared_prefix_segments(batch["position_ids"]) == [(0, 25, 0), (25, 28, 20), (28, 35, 20), (35, 41, 0),
                                                             (41, 44, 0)]
    copies, shared = loss_and_grads(collator(mixed)), loss_and_grads(batch)
    assert shared[0] == pytest.approx(copies[0], rel=1e-5)
    for name, grad in copies[1].items():
        assert torch.allclose(shared[1][name], grad, atol=1e-6, rtol=1e-4), name
