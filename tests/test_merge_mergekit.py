"""protege's merges against reference implementations, on the same tiny models: mergekit for the merge
methods (one YAML through both), peft for merging LoRA adapters tensor by tensor."""

from __future__ import annotations

import math
import weakref
from pathlib import Path

import pytest
import torch
import yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
from safetensors.torch import load_file
from counting_open import counting_open
from test_merge import perturbed

from protege.merge import streaming
from protege.merge.config import merge_from_yaml
from protege.merge.streaming import merge_dirs
from protege.models.tiny import build_tiny


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("mergekit")
    base = build_tiny(root / "base", seed=0)
    return {"base": str(base), "a": str(perturbed(base, root / "a", 1)), "b": str(perturbed(base, root / "b", 2))}


def load_dir(directory) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def mergekit_merge(config: dict, out) -> dict[str, torch.Tensor]:
    options = MergeOptions(quiet=True, write_model_card=False, copy_tokenizer=False, random_seed=0)
    run_merge(MergeConfiguration.model_validate(config), str(out), options)
    return load_dir(out)


def protege_merge(config: dict, tmp_path) -> dict[str, torch.Tensor]:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_dir(merge_from_yaml(path, tmp_path / "protege"))


def entry(model: str, **parameters) -> dict:
    return {"model": model, "parameters": parameters} if parameters else {"model": model}


def mergekit_yaml(models, method, entries, parameters=None, base=True) -> dict:
    config = {"merge_method": method, "models": [entry(models[name], **p) for name, p in entries]}
    if base:
        config["base_model"] = models["base"]
    if parameters:
        config["parameters"] = parameters
    return config


# (method, model entries, global parameters, with base_model, tolerance). Tolerance 0 where both
# compute the same float32 operations in the same order; 1e-6 where the order differs: protege's
# linear is base + sum w_i (theta_i - base) / W (one code path for every method), mergekit's
# sum w_i theta_i / W; normalize is protege's lambda / W times the sum, mergekit's sum / W times lambda.
CASES = {
    "linear": ("linear", [("a", {"weight": 1.0}), ("b", {"weight": 3.0})], {"weight": 0.5}, True, 1e-6),
    "linear-no-base": ("linear", [("a", {"weight": 1.0}), ("b", {"weight": 3.0})], None, False, 1e-6),
    "task_arithmetic": ("task_arithmetic", [("a", {"weight": 1.0}), ("b", {"weight": 0.5})], {"lambda": 0.7},
                        True, 0),
    "task_arithmetic-normalize": ("task_arithmetic", [("a", {"weight": 1.0}), ("b", {"weight": 3.0})],
                                  {"normalize": True, "lambda": 0.9}, True, 1e-6),
    "ties": ("ties", [("a", {"weight": 1.0, "density": 0.5}), ("b", {"weight": 0.5})], {"density": 0.3}, True, 0),
    # at density 0.01 a 64-entry norm keeps int(0.64) = 0 entries; mergekit keeps at least one
    "ties-sparse": ("ties", [("a", {"weight": 1.0}), ("b", {"weight": 2.0})], {"density": 0.01}, True, 0),
    # the base listed among the models is the base, not a third task vector whose weight would count
    "base-listed": ("task_arithmetic", [("base", {}), ("a", {"weight": 1.0}), ("b", {"weight": 3.0})],
                    {"normalize": True}, True, 1e-6),
    "breadcrumbs": ("breadcrumbs", [("a", {"weight": 1.0, "density": 0.8, "gamma": 0.05}),
                                    ("b", {"weight": 0.5, "density": 0.6})], {"gamma": 0.1}, True, 0),
    "dare-density-1": ("dare_linear", [("a", {"weight": 1.0}), ("b", {"weight": 0.5})], {"density": 1.0}, True, 0),
}


@pytest.mark.parametrize("case", CASES)
def test_same_yaml_same_tensors_as_mergekit(models, tmp_path, case):
    method, entries, parameters, base, tolerance = CASES[case]
    config = mergekit_yaml(models, method, entries, parameters, base)
    theirs = mergekit_merge(config, tmp_path / "mergekit")
    ours = protege_merge(config, tmp_path)
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=tolerance, msg=name)


def test_dare_at_density_one_is_task_arithmetic(models, tmp_path):
    entries = [("a", {"weight": 1.0}), ("b", {"weight": 0.5})]
    dare = protege_merge(mergekit_yaml(models, "dare_linear", entries, {"density": 1.0}), tmp_path / "dare")
    arithmetic = protege_merge(mergekit_yaml(models, "task_arithmetic", entries), tmp_path / "ta")
    assert all(torch.equal(dare[name], arithmetic[name]) for name in arithmetic)


def test_dare_keeps_density_and_rescales_by_its_inverse(models, tmp_path):
    density = 0.3
    config = mergekit_yaml(models, "dare_linear", [("a", {"weight": 1.0, "density": density})])
    ours, theirs = protege_merge(config, tmp_path), mergekit_merge(config, tmp_path / "mergekit")
    base, model = load_file(f"{models['base']}/model.safetensors"), load_file(f"{models['a']}/model.safetensors")
    for name in (name for name in base if base[name].numel() >= 2048):
        delta = model[name] - base[name]
        for merged in (ours, theirs):
            kept = merged[name] != base[name]
            # binomial: std sqrt(0.21 / 2048) = 0.01 at the smallest tensor
            assert kept.float().mean().item() == pytest.approx(density, abs=0.05), name
        kept = ours[name] != base[name]
        # protege rescales the survivors by 1 / density, as the DARE paper does
        torch.testing.assert_close((ours[name] - base[name])[kept], delta[kept] / density, rtol=1e-4, atol=1e-6)
        # mergekit rescales to keep the tensor's L1 norm: near 1 / density, never exactly it
        kept = theirs[name] != base[name]
        ratio = (delta.abs().sum() / delta[kept].abs().sum()).item()
        assert ratio == pytest.approx(1 / density, rel=0.15) and not math.isclose(ratio, 1 / density, rel_tol=1e-6)
        torch.testing.assert_close((theirs[name] - base[name])[kept], delta[kept] * ratio, rtol=1e-4, atol=1e-6)


# --- LoRA adapters merged tensor by tensor, against peft's merge_and_unload ------------------------

def tiny_gpt2(directory):
    """GPT-2 stores its projections as Conv1D (in, out): the fan_in_fan_out layout."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=259, n_positions=64, n_embd=32, n_layer=2, n_head=2)).save_pretrained(
        directory)
    return directory


def save_adapter(base, out, **lora):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    # init_lora_weights=False: B is random too, so every update is non-zero
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                                LoraConfig(init_lora_weights=False, **lora))
    peft_model.save_pretrained(out)
    return out, peft_model.merge_and_unload().state_dict()


ADAPTERS = {
    "q-v": ("llama", dict(r=2, target_modules=["q_proj", "v_proj"])),
    "rslora-patterns": ("llama", dict(r=4, lora_alpha=8, target_modules="all-linear", use_rslora=True,
                                      rank_pattern={"layers.1.mlp.up_proj": 2})),
    "alpha-pattern": ("llama", dict(r=4, lora_alpha=8, target_modules="all-linear",
                                    alpha_pattern={"q_proj": 3, "layers.0.mlp.down_proj": 20})),
    "embedding-modules-to-save": ("llama", dict(r=3, target_modules=["embed_tokens", "o_proj"],
                                                modules_to_save=["norm"])),
    "fan-in-fan-out": ("gpt2", dict(r=2, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)),
}


@pytest.mark.parametrize("case", ADAPTERS)
def test_streamed_lora_equals_peft_merge(models, tmp_path, case):
    kind, lora = ADAPTERS[case]
    base = tiny_gpt2(tmp_path / "gpt2") if kind == "gpt2" else models["base"]
    adapter, expected = save_adapter(base, tmp_path / "adapter", **lora)
    merged = load_dir(merge_dirs(base, [adapter], "task_arithmetic", {}, tmp_path / "out"))
    before = load_dir(Path(base))
    changed = [name for name in merged if not torch.equal(merged[name], before[name])]
    assert changed  # the adapter did something, so the comparison below compares something
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6, msg=name)


def test_lora_merge_holds_a_bounded_number_of_tensors(models, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    base = models["base"]
    first, _ = save_adapter(base, tmp_path / "first", r=2, target_modules="all-linear")
    second, _ = save_adapter(base, tmp_path / "second", r=4, target_modules="all-linear", use_rslora=True)
    live, peak, reads = set(), [0], [0]

    def count(path, name, tensor):
        """tensors are counted while alive (weakref callbacks when freed)"""
        token = object()
        live.add(token)
        weakref.finalize(tensor, live.discard, token)
        reads[0] += 1
        peak[0] = max(peak[0], len(live))

    def no_whole_model(*args, **kwargs):
        raise AssertionError("the streaming merge loaded a whole model")

    monkeypatch.setattr(streaming, "safe_open", counting_open(count))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_whole_model)
    merge_dirs(base, [first, second, models["a"]], "ties", {"density": 0.5}, tmp_path / "out")
    # per name: the base, A and B of each adapter, the full model's tensor; 20 names, 3 models
    assert peak[0] <= 1 + 2 + 2 + 1
    # every name's base and full-model tensor, A and B of 14 targets in each adapter: each read once
    assert reads[0] == 20 + 14 * 2 * 2 + 20


def test_a_dora_adapter_is_refused(models, tmp_path):
    adapter, _ = save_adapter(models["base"], tmp_path / "dora", r=2, target_modules=["q_proj"], use_dora=True)
    with pytest.raises(ValueError, match="use_dora"):
        merge_dirs(models["base"], [adapter], "task_arithmetic", {}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
