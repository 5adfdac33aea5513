"""SFT and its variants on tiny models: multi-turn labels, padding-free batches without attention
across examples, Masked Thought, Half Fine-Tuning, the NaN stop, resuming after a kill, TensorBoard
logs, and two processes under `accelerate launch`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from protege.config import TrainConfig
from protege.models import model_dir
from protege.runs import write_jsonl
from protege.records import sft_record
from protege.train import train_method
from protege.train.adapters import group_name, hft_selection
from protege.train.common import TrainingDiverged, last_complete_checkpoint
from protege.train.masked_thought import mask_answer_tokens
from protege.train.sft import tokenize_chat

TINY = model_dir("tiny:0")


def records(n=16):
    return [sft_record("Convert.", f"March {i}, 2020", f"2020-03-{i:02d}", "seed", 0) for i in range(1, n + 1)]


def quiet(**fields) -> TrainConfig:
    return TrainConfig(report_to=["none"], **fields)


def test_every_assistant_turn_is_in_the_loss_and_nothing_else():
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "one"},
            {"role": "assistant", "content": "AAA"}, {"role": "user", "content": "two"},
            {"role": "assistant", "content": "BBBB"}]
    row = tokenize_chat(tokenizer, chat, 10_000)
    learned = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
    assert "AAA" in learned and "BBBB" in learned
    assert "one" not in learned and "two" not in learned and "S" not in learned.replace("<|im_end|>", "")
    assert row["input_ids"] == tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False)


def test_padding_free_batches_do_not_attend_across_examples():
    """Two examples laid end to end with restarting position ids give each the logits it gets alone."""
    model = AutoModelForCausalLM.from_pretrained(TINY).eval()
    a, b = torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([[10, 11, 12]])
    packed = torch.cat([a, b], dim=1)
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]])
    with torch.no_grad():
        # as in training: no KV cache (with one, transformers would not look for packed sequences)
        together = model(input_ids=packed, position_ids=positions, use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=a).logits[0], model(input_ids=b).logits[0]])
        leaking = model(input_ids=packed, use_cache=False).logits[0]  # no position ids: b would see a
    assert torch.allclose(together, alone, atol=1e-5)
    assert not torch.allclose(leaking[5:], alone[5:], atol=1e-3)


def test_masked_thought_masks_only_answer_inputs_at_the_ratio():
    input_ids = torch.arange(10_000).reshape(1, -1)
    labels = torch.full_like(input_ids, -100)
    labels[:, 4000:] = input_ids[:, 4000:]
    masked = mask_answer_tokens(input_ids, labels, 0.3, -1, torch.Generator().manual_seed(0))
    assert torch.equal(masked[:, :4000], input_ids[:, :4000])  # the prompt is never masked
    share = (masked[:, 4000:] == -1).float().mean().item()
    assert 0.27 < share < 0.33
    assert torch.equal(masked[:, 4000:][masked[:, 4000:] != -1], input_ids[:, 4000:][masked[:, 4000:] != -1])


def test_masked_thought_trains_and_logs_its_ratio(tmp_path):
    log = train_method("masked-thought", TINY, records(), quiet(max_steps=3, batch_size=4,
                                                                     method={"name": "masked-thought", "ratio": 0.5}),
                       tmp_path)
    saved = json.loads((tmp_path / "train_log.json").read_text())
    assert saved["method"] == "masked-thought" and saved["mask_ratio"] == 0.5
    assert log["tokens"]["answer"] > 0
    assert any("lora_B" in k and v.abs().sum() > 0
               for k, v in load_file(tmp_path / "model" / "adapter_model.safetensors").items())


def test_hft_selection_is_half_of_every_layer_category_and_seeded():
    names = [n for n, _ in AutoModelForCausalLM.from_pretrained(TINY).named_parameters()]
    first, again, other = hft_selection(names, 3), hft_selection(names, 3), hft_selection(names, 4)
    assert first == again and first["frozen"] != other["frozen"]
    for layer in ("0", "1"):
        attention = [g for g in first["frozen"] if f"layers.{layer}.self_attn" in g]
        assert len(attention) == 2  # q, k, v, o: half
        mlp = [g for g in first["frozen"] if f"layers.{layer}.mlp" in g]
        assert len(mlp) in (1, 2)  # gate, up, down: 1.5 on average
    assert sorted(first["frozen"] + first["trainable"]) == sorted({group_name(n) for n in names})


@pytest.mark.parametrize("method", ["sft", "masked-thought"])
def test_hft_keeps_exactly_the_frozen_half_bit_identical(tmp_path, method):
    before = load_file(TINY / "model.safetensors")
    train_method(method, TINY, records(), quiet(adapter="hft", max_steps=3, batch_size=4, learning_rate=1e-2),
                 tmp_path, stage_seed=7)
    after = load_file(tmp_path / "model" / "model.safetensors")
    frozen = set(json.loads((tmp_path / "train_log.json").read_text())["hft"]["frozen"])
    assert frozen == set(hft_selection(list(before), 7)["frozen"])
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same == (group_name(name) in frozen), name


def test_rslora_scales_by_the_square_root_of_the_rank(tmp_path):
    train_method("sft", TINY, records(), quiet(max_steps=1, batch_size=4, adapter={"rslora": True, "r": 4}), tmp_path)
    config = json.loads((tmp_path / "model" / "adapter_config.json").read_text())
    assert config["use_rslora"] is True and config["r"] == 4


def test_resume_skips_a_checkpoint_killed_mid_save(tmp_path):
    for step, state in ((10, '{"global_step": 10}'), (20, '{"global_st'), (30, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert last_complete_checkpoint(tmp_path / "none") is None


def test_nan_loss_stops_with_a_clear_message(tmp_path):
    with pytest.raises(TrainingDiverged, match="became nan.*learning_rate"):
        train_method("sft", TINY, records(), quiet(adapter="full", max_steps=20, batch_size=4,
                                                   learning_rate=1e12), tmp_path)


def test_tensorboard_event_files_are_written(tmp_path):
    train_method("sft", TINY, records(8), TrainConfig(max_steps=2, batch_size=4), tmp_path)
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))


def _train_command(run_dir: Path, data: Path, *extra: str) -> list[str]:
    return ["-m", "protege.cli", "train", str(Path(__file__).parents[1] / "examples" / "iso-dates"),
            "--run-dir", str(run_dir), "--data", str(data), "--set", "student.model=tiny:0",
            "--set", "train.batch_size=4", "--set", "train.report_to=[none]", *extra]


def test_a_killed_training_resumes_from_its_last_checkpoint(tmp_path):
    data = tmp_path / "data.jsonl"
    write_jsonl(data, records(16))
    cmd = [sys.executable, *_train_command(tmp_path / "run", data, "--set", "train.max_steps=400",
                                           "--set", "train.save_steps=10")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not list((tmp_path / "run").glob("checkpoints/*/checkpoint-*/trainer_state.json")):
        assert time.time() < deadline and proc.poll() is None, "no checkpoint was written"
        time.sleep(0.1)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list((tmp_path / "run").glob("stages/train-*"))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    log = json.loads(Path(json.loads(done.stdout)["log"]).read_text())
    assert log["history"][-2]["step"] == 400
    # every example has the same answer length, so the answer tokens the second process fed count
    # its steps: fewer than 400 means it picked up from a checkpoint instead of step 1
    row = tokenize_chat(AutoTokenizer.from_pretrained(TINY), records(1)[0]["messages"], 10_000)
    per_step = 4 * sum(label != -100 for label in row["labels"])
    assert log["tokens"]["answer"] % per_step == 0 and log["tokens"]["answer"] // per_step <= 390
    assert not list((tmp_path / "run").glob("checkpoints/*/checkpoint-*"))  # cleaned once saved


def test_two_processes_train_together_on_cpu(tmp_path):
    data = tmp_path / "data.jsonl"
    write_jsonl(data, records(16))
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           *_train_command(tmp_path / "run", data, "--set", "train.max_steps=2")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    log = json.loads(Path(json.loads(done.stdout)["log"]).read_text())
    # 2 steps of 4 examples on each of 2 ranks: 16 examples, one epoch
    assert log["metrics"]["epoch"] == pytest.approx(1.0)
    assert len(list((tmp_path / "run").glob("stages/train-r0-*"))) == 1


def test_data_of_the_wrong_shape_fails_with_file_and_line_and_writes_no_stage(tmp_path):
    data = tmp_path / "chat.jsonl"
    write_jsonl(data, records(2))
    done = subprocess.run([sys.executable, *_train_command(tmp_path / "run", data, "--method", "dpo")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {data}:1: dpo trains on a preference pair {{prompt, chosen, rejected}}; this row has no "
        "prompt, chosen, rejected")
    assert not list((tmp_path / "run").glob("stages/train-*")) and not list((tmp_path / "run").glob("stages/.*"))


@pytest.mark.parametrize("packing", ["padding-free", "bfd", "none"])
def test_as_given_order_feeds_batches_in_the_files_order(tmp_path, packing):
    """A curriculum orders the data: with data_order as-given no packing, shuffle or length grouping
    may reorder it, so the first batch holds the first examples."""
    from trl import SFTTrainer
    from protege.train.sft import sft_config, tokenized_dataset
    tokenizer = AutoTokenizer.from_pretrained(model_dir("tiny:0"))
    records = [sft_record("Repeat.", "x" * (40 - 3 * i), "y" * (1 + i), "teacher", 0) for i in range(12)]
    cfg = TrainConfig(batch_size=4, packing=packing, data_order="as-given", report_to=["none"])
    dataset = tokenized_dataset(tokenizer, records, cfg.max_length)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir("tiny:0")),
                         args=sft_config(cfg, tmp_path, "cpu"), train_dataset=dataset, processing_class=tokenizer)
    first = next(iter(trainer.get_train_dataloader()))
    rows = dataset["input_ids"][:4]
    if packing == "padding-free":  # one row: the examples back to back, in order
        assert first["input_ids"][0].tolist() == [token for row in rows for token in row]
    else:
        assert first["input_ids"].shape == (4, max(len(row) for row in rows))
        assert first["input_ids"][0, :len(rows[0])].tolist() == rows[0]
