import gc
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from protege.config import TrainConfig
from protege.models.generate import generate
from protege.records import task_chat
from protege.models import load_model, model_dir
from protege.models.generate import sample_student
from protege.synth.preference_pairs import preference_pairs
from protege.train.adapters import group_name
from protege.train.dpo import build_dpo_trainer, train_dpo
from protege.train.fused_lora import fused_lora_forward


def exact(text, answer, reference):
    return answer == reference


def pairs(n=4):
    """Pairs built the way the pipeline builds them: each item has one right and one wrong sample."""
    items = [(f"March {i}, 2020", f"2020-03-{i:02d}") for i in range(1, n + 1)]
    samples = [[reference, f"2021-03-{i:02d}"] for i, (_, reference) in enumerate(items, 1)]
    return preference_pairs(items, samples, exact, "Convert.")


def config(**kw):
    return TrainConfig(**{"max_steps": 2, "batch_size": 4, "report_to": ["none"], **kw})


def losses(log):
    return [h["loss"] for h in log["history"] if "loss" in h]


def live_parameters() -> list:
    gc.collect()
    return [o for o in gc.get_objects() if type(o) is torch.nn.Parameter]


class CountParameters(TrainerCallback):
    """Distinct parameter storages alive in the process (not only the trainer's) during training,
    leaving out those that existed before the trainer was built."""

    def __init__(self, before):
        self.before, self.counts = {id(p) for p in before}, []

    def on_step_end(self, args, state, control, **kwargs):
        self.counts.append(len({p.data_ptr() for p in live_parameters() if id(p) not in self.before}))


def base_tensors() -> int:
    return len(load_file(model_dir("tiny:0") / "model.safetensors"))  # tied embeddings: stored once


def train_counting(tmp_path, cfg):
    before = live_parameters()  # held, so no id is reused while the trainer lives
    trainer, _, notes = build_dpo_trainer(model_dir("tiny:0"), pairs(), cfg, tmp_path)
    counter = CountParameters(before)
    trainer.add_callback(counter)
    trainer.train()
    return trainer, counter.counts


def test_lora_dpo_holds_one_copy_of_the_base_weights(tmp_path):
    trainer, counts = train_counting(tmp_path, config())
    lora = [n for n, _ in trainer.model.named_parameters() if "lora_" in n]
    assert trainer.ref_model is None and lora
    assert counts == [base_tensors() + len(lora)] * 2  # a reference copy would add base_tensors() more
    layers = [m for m in trainer.model.modules() if hasattr(m, "lora_A")]
    assert layers and all(m.forward.__func__ is fused_lora_forward for m in layers)  # the reference: peft's path
    base = load_file(model_dir("tiny:0") / "model.safetensors")
    in_memory = trainer.model.get_base_model().state_dict()
    for name, weight in base.items():  # the base weights in memory are untouched, not only the file
        key = name.replace(".weight", ".base_layer.weight") if name not in in_memory else name
        assert torch.equal(in_memory[key], weight), name


def test_full_dpo_keeps_no_reference_copy(tmp_path):
    # the reference log-probs are precomputed by the starting model, so full DPO needs no frozen copy
    trainer, counts = train_counting(tmp_path, config(adapter="full"))
    assert trainer.ref_model is None and counts == [base_tensors()] * 2


def test_lora_trains_the_adapter_and_leaves_the_base_alone(tmp_path):
    base = model_dir("tiny:0")
    before = load_file(base / "model.safetensors")
    log = train_dpo(base, pairs(), config(), tmp_path)
    adapter = load_file(tmp_path / "model" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at zero
    assert all(torch.equal(v, load_file(base / "model.safetensors")[k]) for k, v in before.items())
    # at the first step the policy is the reference (adapter B = 0): the DPO loss is log 2
    assert losses(log)[0] == pytest.approx(math.log(2), abs=1e-5)
    assert log["method"] == "dpo" and log["pairs"] == 4 and log["tokens"]["answer"] > 0
    assert not (tmp_path / "checkpoints").exists()


def test_hft_changes_exactly_the_trainable_groups(tmp_path):
    base = model_dir("tiny:0")
    train_dpo(base, pairs(), config(adapter="hft", learning_rate=1e-3), tmp_path, stage_seed=3)
    selection = json.loads((tmp_path / "train_log.json").read_text())["hft"]
    before, after = load_file(base / "model.safetensors"), load_file(tmp_path / "model" / "model.safetensors")
    assert selection["frozen"] and selection["trainable"] and before.keys() == after.keys()
    for name in before:
        group = group_name(name)
        assert group in selection["frozen"] or group in selection["trainable"], name
        assert torch.equal(before[name], after[name]) == (group in selection["frozen"]), name


def test_full_dpo_changes_weights_and_lowers_the_loss(tmp_path):
    base = model_dir("tiny:0")
    log = train_dpo(base, pairs(), config(adapter="full", max_steps=3, learning_rate=1e-3), tmp_path)
    before, after = load_file(base / "model.safetensors"), load_file(tmp_path / "model" / "model.safetensors")
    assert sum(not torch.equal(before[k], after[k]) for k in before) == len(before)
    first, *rest = losses(log)
    assert first == pytest.approx(math.log(2), abs=1e-5) and rest[-1] < first  # one batch of all 4 pairs


def test_no_pairs_or_no_room_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no preference pairs"):
        train_dpo(model_dir("tiny:0"), [], config(), tmp_path)
    with pytest.raises(ValueError, match="max_length"):
        train_dpo(model_dir("tiny:0"), pairs(), config(max_length=10), tmp_path)


def test_preference_pairs_rejects_the_first_wrong_sample():
    calls = []

    def numeric(text, answer, reference):
        calls.append(answer)
        return float(answer) == float(reference)

    items = [("1+1", "2"), ("2+2", "4"), ("3+3", "6"), ("4+4", "")]
    samples = [["2.0", "2.0", "", "  ", "3", "5"],  # repeat and empty skipped; 3 is the first wrong
               ["4", "4.0"],                        # all right: no pair
               [" 6 ", "7", "8"],                   # the reference itself is not asked about
               ["9"]]                               # no reference: nothing to prefer
    rows = preference_pairs(items, samples, numeric, "Add.")
    assert calls == ["2.0", "3", "4.0", "7"]
    assert rows == [
        {"prompt": task_chat("Add.", "1+1"), "chosen": [{"role": "assistant", "content": "2"}],
         "rejected": [{"role": "assistant", "content": "3"}]},
        {"prompt": task_chat("Add.", "3+3"), "chosen": [{"role": "assistant", "content": "6"}],
         "rejected": [{"role": "assistant", "content": "7"}]}]
    assert rows[0]["prompt"] == [{"role": "system", "content": "Add."}, {"role": "user", "content": "1+1"}]
    with pytest.raises(ValueError):
        preference_pairs(items, samples[:2], numeric, "Add.")


def test_sample_student_gives_k_answers_per_chat():
    model, tokenizer = load_model(model_dir("tiny:1"))
    chats = [task_chat("Say.", "x" * n) for n in (3, 9, 1)]
    sampled = sample_student(model, tokenizer, chats, k=4, temperature=1.0, max_new_tokens=5, seed=1)
    assert [len(s) for s in sampled] == [4, 4, 4]
    assert all(len(set(s)) > 1 for s in sampled)  # the copies are sampled, not one answer repeated
    assert sample_student(model, tokenizer, chats, 4, 1.0, 5, seed=1) == sampled  # seeded
    greedy = sample_student(model, tokenizer, chats, k=2, temperature=0.0, max_new_tokens=5, seed=1)
    assert greedy == [[g, g] for g in generate(model, tokenizer, chats, max_new_tokens=5)]
