"""Weights that cannot be loaded (empty, truncated, overwritten, pickle-only) and an adapter of another
base: `eval --model`, `serve` and `merge` each say so in one line naming the file and exit 2, with no
traceback and nothing written, through the one check every loader makes (protege.models.weights)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from protege.cli import main
from protege.models import load_model
from protege.models.tiny import build_tiny
from protege.models.weights import WeightsError, check_model

WEIGHTS = "model.safetensors"


def spoiled(base, directory, how: str):
    """A copy of the tiny model whose weights file is broken in one way; (directory, the file named)."""
    directory.mkdir()
    for path in base.iterdir():
        if path.name != WEIGHTS:
            (directory / path.name).write_bytes(path.read_bytes())
    data = (base / WEIGHTS).read_bytes()
    if how == "pickle":
        torch.save(load_file(base / WEIGHTS), directory / "pytorch_model.bin")
        return directory, directory / "pytorch_model.bin"
    broken = {"empty": b"", "truncated": data[: len(data) // 2], "overwritten": os.urandom(len(data)),
              "header cut": data[:20]}[how]
    (directory / WEIGHTS).write_bytes(broken)
    return directory, directory / WEIGHTS


def lora_of(model_dir, directory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
                   ).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-weights")
    base = build_tiny(root / "base", seed=0)
    return {"root": root, "base": base, "narrow": build_tiny(root / "narrow", seed=1, hidden=32),
            "deep": build_tiny(root / "deep", seed=2, layers=3)}


KINDS = ["empty", "truncated", "overwritten", "header cut", "pickle"]


def one_error_line(capfd, named) -> str:
    err = capfd.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and str(named) in err, err
    return err


@pytest.mark.parametrize("how", KINDS)
def test_the_check_names_the_file(models, tmp_path, how):
    directory, named = spoiled(models["base"], tmp_path / "bad", how)
    with pytest.raises(WeightsError) as caught:
        check_model(directory)
    assert str(caught.value).startswith(f"{named}: ")
    with pytest.raises(WeightsError):
        load_model(directory)  # the loader every command goes through makes the same check


def test_a_sound_model_passes_and_loads(models):
    tensors = check_model(models["base"])
    assert set(tensors) == set(load_file(models["base"] / WEIGHTS))
    assert load_model(models["base"])[0] is not None


def eval_args(examples_dir, tmp_path, model):
    return ["eval", str(examples_dir / "iso-dates"), "--run-dir", str(tmp_path / "run"), "--model", str(model),
            "--set", "student.model=tiny:0", "--set", "eval.max_new_tokens=2"]


@pytest.mark.parametrize("how", KINDS)
def test_eval_model_with_bad_weights_is_one_line(models, tmp_path, examples_dir, capfd, how):
    directory, named = spoiled(models["base"], tmp_path / "bad", how)
    assert main(eval_args(examples_dir, tmp_path, directory)) == 2
    one_error_line(capfd, named)
    assert not list((tmp_path / "run" / "stages").glob("eval-cli*"))


@pytest.fixture
def never_serving(monkeypatch):
    """A model that loads would be served until interrupted: here the test fails instead."""
    import uvicorn
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("the bad model was served"))


@pytest.mark.parametrize("how", KINDS)
def test_serve_with_bad_weights_is_one_line(models, tmp_path, capfd, never_serving, how):
    directory, named = spoiled(models["base"], tmp_path / "bad", how)
    assert main(["serve", str(directory)]) == 2
    one_error_line(capfd, named)


@pytest.mark.parametrize("how", KINDS)
def test_merge_with_bad_weights_is_one_line(models, tmp_path, capfd, how):
    directory, named = spoiled(models["base"], tmp_path / "bad", how)
    for base, model in ((models["base"], directory), (directory, models["base"])):
        config = tmp_path / "merge.yaml"
        config.write_text(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels: [{{model: {model}}}]\n")
        assert main(["merge", str(config), "--out", str(tmp_path / "out")]) == 2
        one_error_line(capfd, named)
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("other,message", [
    ("narrow", r"the LoRA pair of model\.layers\.0\..* makes a \[\d+, 32\] update, but the base .* has it \[\d+, 64\]"),
    ("deep", r"changes 'model\.layers\.2\.self_attn\.[qv]_proj\.weight', which the base .* has not"),
])
def test_an_adapter_of_another_base_is_one_line(models, tmp_path, examples_dir, capfd, never_serving, other,
                                                message):
    adapter = lora_of(models[other], tmp_path / "adapter")
    assert main(eval_args(examples_dir, tmp_path, adapter)) == 2
    err = one_error_line(capfd, adapter / "adapter_model.safetensors")
    assert "an adapter of another base" in err
    with pytest.raises(WeightsError, match=message):
        load_model(models["base"], adapter=adapter)
    assert main(["serve", str(adapter), "--base", str(models["base"])]) == 2
    one_error_line(capfd, adapter / "adapter_model.safetensors")


def test_an_adapter_of_its_own_base_loads(models, tmp_path):
    adapter = lora_of(models["base"], tmp_path / "adapter")
    model, _ = load_model(models["base"], adapter=adapter)
    assert model is not None


def test_a_shard_missing_from_its_index_is_named(models, tmp_path):
    directory, _ = spoiled(models["base"], tmp_path / "sharded", "empty")
    (directory / WEIGHTS).rename(directory / "model-00001-of-00002.safetensors")
    (directory / "model-00001-of-00002.safetensors").write_bytes((models["base"] / WEIGHTS).read_bytes())
    names = sorted(load_file(models["base"] / WEIGHTS))
    weight_map = dict.fromkeys(names[:-1], "model-00001-of-00002.safetensors") | {
        names[-1]: "model-00002-of-00002.safetensors"}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(WeightsError, match=f"model-00002-of-00002.safetensors: has no tensor '{names[-1]}'"):
        load_model(directory)


def test_a_config_that_is_not_json_is_named(models, tmp_path):
    directory, _ = spoiled(models["base"], tmp_path / "bad", "truncated")
    (directory / WEIGHTS).write_bytes((models["base"] / WEIGHTS).read_bytes())
    (directory / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(WeightsError, match=f"{directory / 'config.json'}: not a JSON file"):
        load_model(directory)
