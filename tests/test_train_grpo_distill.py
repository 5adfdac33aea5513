import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from protege.config import TrainConfig
from protege.models import model_dir
from protege.records import sft_record
from protege.train.adapters import group_name
from protege.train.distill import check_same_tokenizer, train_distill
from protege.train.grpo import prompt_and_reference, train_grpo


def records(n=8):
    return [sft_record("Convert.", f"March {i}, 2020", f"2020-03-{i:02d}", "seed", 0) for i in range(1, n + 1)]


def base_weights():
    return load_file(model_dir("tiny:0") / "model.safetensors")


def lora_trained(out) -> bool:
    """Only LoRA tensors were trained and saved (the base stays as it is), and they moved."""
    adapter = load_file(out / "model" / "adapter_model.safetensors")
    assert adapter and all("lora_A" in k or "lora_B" in k for k in adapter), list(adapter)
    return any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at zero


def assert_trained(out, adapter):
    """lora: only an adapter was saved and it moved; full: most tensors changed; hft: exactly the
    groups outside train_log.json's frozen list changed."""
    if adapter == "lora":
        assert lora_trained(out) and not (out / "model" / "model.safetensors").exists()
        return
    before, after = base_weights(), load_file(out / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if adapter == "full":
        assert len(changed) >= len(before) // 2
        return
    frozen = set(json.loads((out / "train_log.json").read_text())["hft"]["frozen"])
    assert frozen and changed == {k for k in before if group_name(k) not in frozen}


def spread_reward(calls):
    """Depends on every character of the completion, so a group's completions get different rewards
    (a constant reward gives zero advantages and no gradient)."""
    def reward(input, completion, reference):
        calls.append((input, completion, reference))
        return (sum(map(ord, completion)) % 101) / 101
    return reward


# GRPO

def test_prompt_is_everything_before_the_last_assistant_turn():
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"}]
    prompt, reference = prompt_and_reference({"messages": chat})
    assert prompt == chat[:4] and reference == "d"
    assert prompt_and_reference({"messages": chat[:2]}) is None


def test_grpo_lora_trains_adapter_from_the_reward_and_leaves_base_alone(tmp_path):
    calls = []
    cfg = TrainConfig(max_steps=2, batch_size=2, method={"name": "grpo", "generations": 2, "max_completion": 8},
                      report_to=["none"])
    log = train_grpo(model_dir("tiny:0"), records(), cfg, tmp_path, reward=spread_reward(calls))
    assert_trained(tmp_path, "lora")
    # 2 steps x 2 prompts x 2 completions, each scored with the record's own input and reference
    assert len(calls) == 8
    answers = {r["messages"][1]["content"]: r["messages"][-1]["content"] for r in records()}
    assert all(answers[i] == ref and isinstance(c, str) for i, c, ref in calls)
    rewards = [h["reward"] for h in log["history"] if "reward" in h]
    assert len(rewards) == 2 and all(math.isfinite(r) for r in rewards)
    assert log["method"] == "grpo" and log["prompts_per_step"] == 2


def test_grpo_hft_changes_only_the_trainable_half(tmp_path):
    cfg = TrainConfig(adapter="hft", max_steps=2, batch_size=2, method={"name": "grpo", "generations": 2,
                                                                         "max_completion": 8},
                      learning_rate=1e-3, report_to=["none"])
    train_grpo(model_dir("tiny:0"), records(), cfg, tmp_path, reward=spread_reward([]))
    assert_trained(tmp_path, "hft")


def test_grpo_needs_a_reward(tmp_path):
    with pytest.raises(ValueError, match="reward"):
        train_grpo(model_dir("tiny:0"), records(), TrainConfig(), tmp_path)


# logit distillation

def count_generations(monkeypatch):
    """Count the batches GKD replaces by the student's own samples."""
    from trl.experimental.gkd import GKDTrainer
    original, calls = GKDTrainer.generate_on_policy_outputs, []

    def counted(model, inputs, generation_config):
        calls.append(1)
        return original(model, inputs, generation_config)
    monkeypatch.setattr(GKDTrainer, "generate_on_policy_outputs", staticmethod(counted))
    return calls


@pytest.mark.parametrize("loss, adapter, lmbda, beta, on_policy_steps", [
    ("forward-kl", "lora", 0.0, 0.0, 0),    # teacher-forced on the records' answers
    ("reverse-kl", "full", 1.0, 1.0, 3),    # every batch sampled by the student
    ("gkd", "hft", 1.0, 0.25, 3),           # lmbda=1: on-policy, beta from the options
])
def test_logit_distillation_maps_the_loss_onto_gkd(tmp_path, monkeypatch, loss, adapter, lmbda, beta, on_policy_steps):
    generations = count_generations(monkeypatch)
    cfg = TrainConfig(adapter=adapter, max_steps=3, batch_size=2, report_to=["none"],
                      method={"name": "distill", "teacher": "tiny:1", "loss": loss, "lmbda": 1.0, "beta": 0.25})
    log = train_distill(model_dir("tiny:0"), records(), cfg, tmp_path)
    assert (log["method"], log["lmbda"], log["beta"]) == ("distill", lmbda, beta)
    assert len(generations) == on_policy_steps
    losses = [h["loss"] for h in log["history"] if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(x) and x >= 0 for x in losses)
    assert_trained(tmp_path, adapter)


def test_gkd_mixes_teacher_forced_and_on_policy_batches(tmp_path, monkeypatch):
    generations = count_generations(monkeypatch)
    cfg = TrainConfig(adapter="full", max_steps=4, batch_size=1, report_to=["none"],
                      method={"name": "distill", "teacher": "tiny:1", "loss": "gkd", "lmbda": 0.5})
    log = train_distill(model_dir("tiny:0"), records(), cfg, tmp_path)
    assert (log["lmbda"], log["beta"]) == (0.5, 0.5)
    assert 0 < len(generations) < 4  # seeded: some batches of each kind


def copy_of_tiny1(tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(model_dir("tiny:1"), teacher)
    return teacher


def test_teacher_with_another_token_order_is_refused(tmp_path):
    # same number of tokens (TRL's own check compares only vocab_size) but two ids swapped
    teacher = copy_of_tiny1(tmp_path)
    tokenizer = json.loads((teacher / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    (teacher / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ValueError, match="does not share the student's tokenizer"):
        check_same_tokenizer(model_dir("tiny:0"), teacher)
    cfg = TrainConfig(max_steps=1, batch_size=2, method={"name": "distill", "teacher": str(teacher)},
                      report_to=["none"])
    with pytest.raises(ValueError, match="sequence-level distillation"):
        train_distill(model_dir("tiny:0"), records(), cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was trained or written


def test_teacher_with_another_vocab_size_is_refused(tmp_path):
    teacher = copy_of_tiny1(tmp_path)
    config = json.loads((teacher / "config.json").read_text())
    config["vocab_size"] += 64
    (teacher / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="logits per token"):
        check_same_tokenizer(model_dir("tiny:0"), teacher)
    check_same_tokenizer(model_dir("tiny:0"), model_dir("tiny:1"))  # the real pair passes


def test_without_a_teacher_model_distill_is_sft_on_the_answers(tmp_path):
    cfg = TrainConfig(max_steps=2, batch_size=4, report_to=["none"])
    log = train_distill(model_dir("tiny:0"), records(), cfg, tmp_path)
    saved = json.loads((tmp_path / "train_log.json").read_text())
    assert log["method"] == saved["method"] == "distill-sequence"
    assert saved["tokens"]["answer"] > 0 and lora_trained(tmp_path)  # SFT's log, SFT's adapter


# the divergences behind the mapping, by hand on a two-token vocabulary

def test_trl_beta_selects_forward_kl_reverse_kl_and_jsd():
    from trl.experimental.gkd import GKDTrainer
    teacher, student = [0.75, 0.25], [0.5, 0.5]

    def kl(p, q):
        return sum(a * math.log(a / b) for a, b in zip(p, q))

    def jsd(beta):
        mix = [beta * t + (1 - beta) * s for t, s in zip(teacher, student)]
        return beta * kl(teacher, mix) + (1 - beta) * kl(student, mix)

    expected = {0.0: kl(teacher, student),   # 0.75 ln 1.5 + 0.25 ln 0.5 = 0.130812
                1.0: kl(student, teacher),   # 0.5 ln(2/3) + 0.5 ln 2 = 0.143841
                0.5: jsd(0.5),               # M = (0.625, 0.375): 0.033822
                0.25: jsd(0.25)}
    assert expected[0.0] == pytest.approx(0.130812, abs=1e-6)
    assert expected[1.0] == pytest.approx(0.143841, abs=1e-6)
    assert expected[0.5] == pytest.approx(0.033822, abs=1e-6)
    logits = lambda p: torch.tensor([[[math.log(x) for x in p]]])  # noqa: E731
    for beta, value in expected.items():
        got = GKDTrainer.generalized_jsd_loss(logits(student), logits(teacher), beta=beta)
        assert got.item() == pytest.approx(value, rel=1e-5), beta
