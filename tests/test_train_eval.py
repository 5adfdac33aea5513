import torch
from safetensors.torch import load_file

from protege.config import EvalConfig, Example, TrainConfig
from protege.models.generate import generate
from protege.evaluate.task_eval import evaluate_model
from protege.records import task_chat
from protege.models import load_model, model_dir
from protege.records import sft_record
from protege.train.sft import train_sft


def records(n=16):
    return [sft_record("Convert.", f"March {i}, 2020", f"2020-03-{i:02d}", "seed", 0) for i in range(1, n + 1)]


def test_lora_trains_adapter_and_leaves_base_alone(tmp_path):
    base = model_dir("tiny:0")
    before = load_file(base / "model.safetensors")
    log = train_sft(base, records(), TrainConfig(max_steps=4, batch_size=4), tmp_path)
    adapter = load_file(tmp_path / "model" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at zero
    assert all(torch.equal(v, load_file(base / "model.safetensors")[k]) for k, v in before.items())
    assert torch.isfinite(torch.tensor(log["metrics"]["train_loss"]))


def test_full_finetune_changes_weights(tmp_path):
    base = model_dir("tiny:0")
    train_sft(base, records(), TrainConfig(adapter="full", max_steps=2, batch_size=4), tmp_path)
    before, after = load_file(base / "model.safetensors"), load_file(tmp_path / "model" / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) >= len(before) // 2


def test_training_lowers_the_answer_loss(tmp_path):
    base = model_dir("tiny:0")
    data = records(8)
    log = train_sft(base, data, TrainConfig(adapter="full", epochs=30, batch_size=8, learning_rate=3e-3), tmp_path)
    losses = [h["loss"] for h in log["history"] if "loss" in h]
    assert losses[-1] < losses[0] * 0.5, losses


def test_batched_generation_matches_one_at_a_time():
    model, tokenizer = load_model(model_dir("tiny:1"))
    chats = [task_chat("Say.", "x" * n) for n in (1, 7, 3, 12)]
    batched = generate(model, tokenizer, chats, max_new_tokens=6, batch_size=4)
    single = [generate(model, tokenizer, [c], max_new_tokens=6, batch_size=1)[0] for c in chats]
    assert batched == single


def test_evaluate_model_scores_every_item():
    model, tokenizer = load_model(model_dir("tiny:0"))
    items = [Example(input="a", output="b"), Example(input="c", output="d")]
    recs, summary = evaluate_model(model, tokenizer, items, "I.", "exact", EvalConfig(max_new_tokens=3))
    assert summary["n"] == 2 and len(recs) == 2 and all("prediction" in r for r in recs)


def test_a_local_hf_directory_is_a_student(tmp_path):
    import pytest
    from protege.models import ModelNotFound
    tiny = model_dir("tiny:0")
    assert model_dir(str(tiny)) == tiny.resolve()
    assert model_dir(tiny.name, base=tiny.parent) == tiny.resolve()  # relative to the task folder
    with pytest.raises(ModelNotFound, match="config.json"):
        model_dir(str(tmp_path))
