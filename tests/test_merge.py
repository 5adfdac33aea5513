"""Merge methods against tensors computed by hand, and streaming merges of tiny model directories."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from counting_open import counting_open

from protege.merge import merge_tensor
from protege.merge import streaming
from protege.merge.lines import layer_index
from protege.merge.streaming import merge_dirs
from protege.models.tiny import build_tiny
from protege.registry import MERGE

T = torch.tensor


def test_registry_names_every_method():
    assert set(MERGE.names()) == {"task_arithmetic", "linear", "ties", "dare", "breadcrumbs", "lines"}
    with pytest.raises(ValueError, match="unknown merge method"):
        merge_tensor("soup", T([1.0]), [T([2.0])], [1.0], {})


def test_task_arithmetic_by_hand():
    base = T([[1.0, 2, 3], [4, 5, 6]])
    first = base + T([[1.0, 0, -1], [2, 0, 0]])
    second = base + T([[0.0, 1, 1], [-2, 0, 3]])
    # 2 * (d1 + 0.5 d2) = [[2, 1, -1], [2, 0, 3]]
    merged = MERGE.get("task_arithmetic")(base, [first, second], [1.0, 0.5], scale=2.0)
    assert torch.equal(merged, T([[3.0, 3, 2], [6, 5, 9]]))


def test_linear_is_the_weighted_average():
    base = torch.zeros(1, 4)
    first, second = T([[4.0, 0, 8, -4]]), T([[0.0, 4, -8, 4]])
    # (1 * first + 3 * second) / 4
    assert torch.equal(MERGE.get("linear")(base, [first, second], [1.0, 3.0]), T([[1.0, 3, -4, 2]]))


TIES_DELTAS = [T([[4.0, -1, 2, -3]]), T([[-2.0, 3, -1, 5]]), T([[1.5, 1, -6, 0.5]])]


def test_ties_by_hand():
    # trimmed to 2 of 4: [4,0,0,-3], [0,3,0,5], [1.5,0,-6,0]
    # equal weights: sums [5.5,3,-6,2] elect [+,+,-,+]; agreeing means [(4+1.5)/2, 3, -6, 5]
    base = torch.zeros(1, 4)
    merged = MERGE.get("ties")(base, TIES_DELTAS, [1.0, 1.0, 1.0], density=0.5)
    assert torch.equal(merged, T([[2.75, 3, -6, 5]]))
    # weights [3,1,1]: last entry's mass -9 + 5 elects -, so only the first model (-9 / 3) counts;
    # first entry (12 + 1.5) / (3 + 1)
    merged = MERGE.get("ties")(base, TIES_DELTAS, [3.0, 1.0, 1.0], density=0.5, scale=2.0)
    assert torch.equal(merged, 2 * T([[3.375, 3, -6, -3]]))


def test_ties_does_not_depend_on_model_order():
    base = torch.full((1, 4), 0.5)
    models = [base + delta for delta in TIES_DELTAS]
    forward = MERGE.get("ties")(base, models, [3.0, 1.0, 2.0], density=0.5)
    backward = MERGE.get("ties")(base, models[::-1], [2.0, 1.0, 3.0], density=0.5)
    assert torch.equal(forward, backward)


def test_dare_without_drop_is_task_arithmetic():
    base = T([[1.0, 2, 3], [4, 5, 6]])
    models = [base + T([[1.0, 0, -1], [2, 0, 0]]), base + T([[0.0, 1, 1], [-2, 0, 3]])]
    merged = MERGE.get("dare")(base, models, [1.0, 0.5], name="w", drop=0.0, scale=2.0)
    assert torch.equal(merged, T([[3.0, 3, 2], [6, 5, 9]]))


def test_dare_keeps_or_rescales_each_entry():
    base, delta = torch.zeros(1, 200), torch.full((1, 200), 3.0)
    merged = MERGE.get("dare")(base, [delta], [1.0], name="w", drop=0.75, seed=1)
    # each entry is dropped (0) or kept and rescaled by 1 / (1 - 0.75)
    assert set(merged.flatten().tolist()) == {0.0, 12.0}


def test_dare_is_seeded_per_tensor_name():
    base, model = torch.zeros(64, 64), torch.randn(64, 64, generator=torch.Generator().manual_seed(0))

    def run(name, seed):
        return MERGE.get("dare")(base, [model], [1.0], name=name, drop=0.5, seed=seed)
    first_a, first_b = run("a", 7), run("b", 7)
    # b merged before a gives the same tensors: the mask depends on the name, not on call order
    assert torch.equal(run("b", 7), first_b) and torch.equal(run("a", 7), first_a)
    assert not torch.equal(first_a, first_b)
    assert not torch.equal(run("a", 8), first_a)


def test_dare_preserves_the_expected_update():
    base, model = torch.zeros(1000, 1000), torch.ones(1000, 1000)
    merged = MERGE.get("dare")(base, [model], [1.0], name="big", drop=0.9, seed=3)
    # kept fraction ~ 0.1 (std 0.0003); mean ~ 1 (std sqrt(0.9 / 0.1) / 1000 = 0.003)
    assert (merged != 0).float().mean().item() == pytest.approx(0.1, abs=0.003)
    assert merged.mean().item() == pytest.approx(1.0, abs=0.02)


def test_breadcrumbs_drops_largest_and_smallest_by_hand():
    base = torch.zeros(1, 10)
    first = T([[-1.0, 2, -3, 4, 5, -6, 7, 8, -9, 10]])
    second = T([[10.0, -9, 8, -7, 6, 5, -4, 3, 2, -1]])
    # beta 0.1 drops the 1 largest (|10|), gamma 0.3 the 3 smallest (|1|,|2|,|3|) of each
    merged = MERGE.get("breadcrumbs")(base, [first], [2.0], beta=0.1, gamma=0.3)
    assert torch.equal(merged, 2 * T([[0.0, 0, 0, 4, 5, -6, 7, 8, -9, 0]]))
    merged = MERGE.get("breadcrumbs")(base, [first, second], [1.0, 1.0], beta=0.1, gamma=0.3)
    # second keeps [0,-9,8,-7,6,5,-4,0,0,0]
    assert torch.equal(merged, T([[0.0, -9, 8, -3, 11, -1, 3, 8, -9, 0]]))


def test_lines_scales_by_depth_by_hand():
    base, model = T([[1.0, 1]]), T([[3.0, -3]])  # task vector [2, -4]

    def lines(name):
        return MERGE.get("lines")(base, [model], [1.0], name=name, num_layers=3, alpha=0.2, beta=0.6)
    # layer l of 3: 0.2 + 0.6 * l / 2 -> 0.2, 0.5, 0.8; outside the layers: alpha
    assert torch.allclose(lines("model.layers.0.mlp.up_proj.weight"), T([[1.4, 0.2]]))
    assert torch.allclose(lines("model.layers.1.mlp.up_proj.weight"), T([[2.0, -1.0]]))
    assert torch.allclose(lines("model.layers.2.self_attn.q_proj.weight"), T([[2.6, -2.2]]))
    assert torch.allclose(lines("model.embed_tokens.weight"), T([[1.4, 0.2]]))


def test_layer_index_reads_the_layer_number():
    assert layer_index("model.layers.12.self_attn.q_proj.weight") == 12
    assert layer_index("model.embed_tokens.weight") is None
    assert layer_index("model.norm.weight") is None


def test_merge_keeps_the_base_dtype():
    base = T([[1.0, 2.0]], dtype=torch.bfloat16)
    merged = merge_tensor("ties", base, [base + 1], [1.0], {"density": 1.0})
    assert merged.dtype == torch.bfloat16 and torch.equal(merged, T([[2.0, 3.0]], dtype=torch.bfloat16))


def test_mismatched_shapes_fail_clearly():
    with pytest.raises(ValueError, match="does not match"):
        MERGE.get("task_arithmetic")(torch.zeros(2, 3), [torch.zeros(3, 2)], [1.0])


# --- streaming merges of model directories ---------------------------------------------------------

def perturbed(base_dir, out, seed):
    """A 'fine-tuned' copy of the base: every weight moved by seeded noise."""
    weights = load_file(base_dir / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    moved = {name: tensor + 0.05 * torch.randn(tensor.shape, generator=generator)
             for name, tensor in weights.items()}
    out.mkdir()
    save_file(moved, out / "model.safetensors", metadata={"format": "pt"})
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (out / name).write_bytes((base_dir / name).read_bytes())
    return out


def split_by_tensor(model_dir, out):
    """The same model saved one tensor per shard, with transformers' index json."""
    weights = load_file(model_dir / "model.safetensors")
    out.mkdir()
    weight_map = {}
    for i, (name, tensor) in enumerate(sorted(weights.items()), 1):
        shard = f"model-{i:05d}-of-{len(weights):05d}.safetensors"
        save_file({name: tensor}, out / shard, metadata={"format": "pt"})
        weight_map[name] = shard
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (out / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    base = build_tiny(root / "base", seed=0)
    return base, perturbed(base, root / "ft1", 1), perturbed(base, root / "ft2", 2)


def in_memory(method, params, base_dir, model_dirs, weights):
    base = load_file(base_dir / "model.safetensors")
    finetuned = [load_file(d / "model.safetensors") for d in model_dirs]
    return {name: merge_tensor(method, tensor, [f[name] for f in finetuned], weights, params, name, 2)
            for name, tensor in base.items()}


@pytest.mark.parametrize("method,params", [("ties", {"density": 0.5}), ("dare", {"drop": 0.5, "seed": 4}),
                                           ("lines", {"alpha": 0.1, "beta": 0.9})])
def test_merge_dirs_equals_the_pure_functions(models, tmp_path, method, params):
    from transformers import AutoModelForCausalLM

    base, first, second = models
    out = merge_dirs(base, [first, second], method, params, tmp_path / "out", weights=[1.0, 0.5],
                     max_shard_bytes=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # several bounded shards
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
    expected = in_memory(method, params, base, [first, second], [1.0, 0.5])
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


def test_merge_dirs_reads_each_tensor_once_through_safe_open(models, tmp_path, monkeypatch):
    base, first, second = models
    reads = []

    monkeypatch.setattr(streaming, "safe_open", counting_open(lambda path, name, _: reads.append((str(path), name))))
    split_base = split_by_tensor(base, tmp_path / "split")
    out = merge_dirs(split_base, [first, second], "task_arithmetic", {"scale": 0.5}, tmp_path / "out")
    names = load_file(base / "model.safetensors").keys()
    # every tensor of every input read exactly once, by name: never a whole file at once
    assert len(reads) == len(set(reads)) == 3 * len(names)
    merged = load_file(out / "model.safetensors")
    assert merged.keys() == names
    expected = in_memory("task_arithmetic", {"scale": 0.5}, base, [first, second], [1.0, 1.0])
    assert all(torch.equal(merged[name], expected[name]) for name in names)


def test_merge_dirs_merges_a_lora_adapter_into_the_base_first(models, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = models[0]
    torch.manual_seed(5)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                                LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(base).save_pretrained(adapter)
    full = peft_model.merge_and_unload().state_dict()
    out = merge_dirs(base, [adapter], "task_arithmetic", {}, tmp_path / "out")
    merged = load_file(out / "model.safetensors")
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           load_file(base / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"])
    for name, tensor in merged.items():
        assert torch.allclose(tensor, full[name], atol=1e-6), name


def test_merge_dirs_leaves_nothing_when_a_model_lacks_a_tensor(models, tmp_path):
    base, first, _ = models
    partial = tmp_path / "partial"
    partial.mkdir()
    weights = load_file(first / "model.safetensors")
    weights.pop("model.norm.weight")
    save_file(weights, partial / "model.safetensors")
    (partial / "config.json").write_bytes((first / "config.json").read_bytes())
    with pytest.raises(KeyError, match="model.norm.weight"):
        merge_dirs(base, [partial], "linear", {}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
