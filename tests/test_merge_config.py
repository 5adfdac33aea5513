"""`protege merge FILE.yaml`: mergekit's YAML read into protege's merge, parameters resolved per model,
errors naming file, line and field, and per-model parameters reaching the methods (by hand)."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from test_merge import perturbed

from protege.config import ConfigError
from protege.merge.config import MergeError, load_plan, merge_from_yaml
from protege.models.tiny import build_tiny
from protege.registry import MERGE

T = torch.tensor


@pytest.fixture
def folder(tmp_path):
    """Model folders that resolve (a config.json is all a plan needs) beside the YAML."""
    for name in ("base", "a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    return tmp_path


def plan_of(folder, text: str, out=None):
    path = folder / "merge.yaml"
    path.write_text(textwrap.dedent(text))
    return load_plan(path, out)


def test_parameters_resolve_as_in_mergekit(folder):
    plan = plan_of(folder, """
        merge_method: ties
        base_model: base
        models:
          - model: a
            parameters: {weight: 2.0, density: 0.5}
          - model: b
        parameters: {density: 0.3, lambda: 0.8}
        shard_size: 500kB
        """)
    # a model's own value wins, then the global one, then mergekit's default (weight 1.0)
    assert plan.method == "ties" and plan.weights == [2.0, 1.0]
    assert plan.params == {"density": [0.5, 0.3], "scale": 0.8}
    assert plan.base == (folder / "base").resolve() and plan.models == [(folder / n).resolve() for n in "ab"]
    assert plan.out == folder / "merged" and plan.shard_bytes == 500_000 and plan.dtype is None


@pytest.mark.parametrize("method,parameters,expected", [
    # normalize on a sum: lambda / (1 + 3)
    ("task_arithmetic", "{normalize: true, lambda: 0.6}", {"scale": 0.15}),
    ("task_arithmetic", "{lambda: 0.6}", {"scale": 0.6}),
    # density is what DARE keeps; protege's dare takes the drop rate
    ("dare_linear", "{density: 0.25, seed: 7}", {"drop": [0.75, 0.75], "seed": 7, "scale": 1.0}),
    ("dare", "{density: 0.5, normalize: true}", {"drop": [0.5, 0.5], "seed": 0, "scale": 0.25}),
    # mergekit's gamma (the largest share dropped) is the paper's and protege's beta
    ("breadcrumbs", "{density: 0.9, gamma: 0.02}", {"density": [0.9, 0.9], "beta": [0.02, 0.02], "scale": 1.0}),
    ("breadcrumbs", "{}", {"density": [1.0, 1.0], "beta": [0.01, 0.01], "scale": 1.0}),
    ("lines", "{alpha: 0.2, beta: 0.5}", {"alpha": 0.2, "beta": 0.5}),
    ("ties", "{}", {"density": [1.0, 1.0], "scale": 1.0}),
])
def test_each_method_gets_its_own_parameters(folder, method, parameters, expected):
    plan = plan_of(folder, f"""
        merge_method: {method}
        base_model: base
        models: [{{model: a}}, {{model: b, parameters: {{weight: 3.0}}}}]
        parameters: {parameters}
        """)
    assert plan.method == ("dare" if method == "dare_linear" else method)
    # one approx per value: pytest 9.2's approx refuses lists nested in a dict
    assert set(plan.params) == set(expected)
    for key, value in expected.items():
        assert plan.params[key] == pytest.approx(value), key


def test_linear_averages_the_base_too_as_mergekit_does(folder):
    plan = plan_of(folder, """
        merge_method: linear
        base_model: base
        models: [{model: a, parameters: {weight: 2.0}}, {model: b}]
        parameters: {weight: 0.5}
        dtype: bfloat16
        """)
    assert plan.models == [(folder / n).resolve() for n in ("base", "a", "b")]
    assert plan.weights == [0.5, 2.0, 0.5] and plan.params == {} and plan.dtype == torch.bfloat16
    no_base = plan_of(folder, "merge_method: linear\nmodels: [{model: a}, {model: b}]\n")
    assert no_base.base == (folder / "a").resolve() and no_base.models == [no_base.base, (folder / "b").resolve()]


def test_an_adapter_is_merged_onto_the_base(folder):
    plan = plan_of(folder, "merge_method: task_arithmetic\nbase_model: base\nmodels: [{model: adapter}]\n")
    assert plan.models == [(folder / "adapter").resolve()]


def test_the_base_among_the_models_is_not_a_task_vector(folder):
    plan = plan_of(folder, "merge_method: task_arithmetic\nbase_model: base\n"
                           "models: [{model: base}, {model: a}]\nparameters: {normalize: true}\n")
    assert plan.models == [(folder / "a").resolve()] and plan.params == {"scale": 1.0}


def test_command_line_out_wins(folder):
    plan = plan_of(folder, "merge_method: linear\nmodels: [{model: a}]\nout: there\n", out=folder / "here")
    assert plan.out == folder / "here"
    assert plan_of(folder, "merge_method: linear\nmodels: [{model: a}]\nout: there\n").out == folder / "there"


BASE = "merge_method: {method}\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      {model}\n" \
       "parameters:\n  {shared}\n"


@pytest.mark.parametrize("method,model,shared,line,field,message", [
    ("ties", "densty: 0.5", "lambda: 1", 6, "models.0.parameters.densty", "unknown key"),
    ("ties", "weight: heavy", "lambda: 1", 6, "models.0.parameters.weight", "valid number"),
    ("ties", "density: 1.5", "lambda: 1", 6, "models.0.parameters.density", "less than or equal to 1"),
    ("ties", "weight: 1", "lambda: big", 8, "parameters.lambda", "valid number"),
    ("slerp", "weight: 1", "t: 0.5", 1, "merge_method",
     "unsupported merge method 'slerp'; protege merges: breadcrumbs, dare, dare_linear, linear, lines, "
     "task_arithmetic, ties"),
    ("dare_ties", "weight: 1", "lambda: 1", 1, "merge_method", "unsupported merge method 'dare_ties'"),
    ("breadcrumbs_ties", "weight: 1", "lambda: 1", 1, "merge_method", "unsupported"),
    ("task_arithmetic", "density: 0.5", "lambda: 1", 6, "models.0.parameters.density",
     "not a parameter of task_arithmetic"),
    ("lines", "weight: 1", "lambda: 2", 8, "parameters.lambda", "not a parameter of lines"),
    ("ties", "weight: 1", "normalize: false", 8, "parameters.normalize", "computes only normalize: true"),
    ("dare_linear", "weight: 1", "rescale: false", 8, "parameters.rescale", "computes only rescale: true"),
    ("ties", "weight: 1", "rescale: true", 8, "parameters.rescale", "computes only rescale: false"),
    ("dare", "density: 0", "seed: 1", 6, "models.0.parameters.density", "density above 0"),
])
def test_bad_files_name_file_line_and_field(folder, method, model, shared, line, field, message):
    with pytest.raises(ConfigError) as caught:
        plan_of(folder, BASE.format(method=method, model=model, shared=shared))
    assert str(caught.value).startswith(f"{folder / 'merge.yaml'}:{line}: field '{field}': ")
    assert message in str(caught.value)


@pytest.mark.parametrize("text,line,field,message", [
    ("merge_method: ties\nmodels: [{model: a}]\n", 1, "base_model", "ties needs a base_model"),
    ("merge_method: ties\nbase_model: base\nmodels: []\n", 3, "models", "no models to merge"),
    ("merge_method: ties\nbase_model: base\nmodels:\n  - model: a\n  - model: nowhere\n", 5, "models.1.model",
     "nowhere: not embedded:NAME"),
    ("merge_method: ties\nbase_model: base\nmodels: [{model: base}]\n", 3, "models", "besides the base"),
    ("merge_method: linear\nmodels:\n  - model: a\n  - model: adapter\n", 4, "models.1.model",
     "a LoRA adapter needs a base_model"),
    ("merge_method: ties\nbase_model: adapter\nmodels: [{model: a}]\n", 2, "base_model",
     "the base must be a full model"),
    ("merge_method: linear\nmodels: [{model: a}]\nout: a\n", 3, "out", "one of the models merged"),
    ("merge_method: linear\nmodels: [{model: a}]\nshard_size: huge\n", 3, "shard_size", "not in a valid format"),
    ("merge_method: linear\nmodels: [{model: a}]\ndtype: int8\n", 3, "dtype", "'float32'"),
    ("merge_method: linear\nmodels: [{model: a}]\ntokenizer_source: base\n", 3, "tokenizer_source", "unknown key"),
    ("- just\n- a list\n", 1, "(document)", "expected a mapping"),
])
def test_bad_models_and_shapes_name_the_field(folder, text, line, field, message):
    with pytest.raises(ConfigError) as caught:
        plan_of(folder, text)
    assert str(caught.value).startswith(f"{folder / 'merge.yaml'}:{line}: field '{field}': ")
    assert message in str(caught.value)


def test_invalid_yaml_names_its_line(folder):
    with pytest.raises(ConfigError, match=r"merge.yaml:2: invalid YAML: mapping values are not allowed"):
        plan_of(folder, "merge_method: ties\nbase_model: a: b\nmodels: []\n")


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="merge file not found"):
        merge_from_yaml(tmp_path / "absent.yaml")


# --- merging from a YAML file ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-config")
    base = build_tiny(root / "base", seed=0)
    perturbed(base, root / "a", 1), perturbed(base, root / "b", 2)
    return root


def test_merge_from_yaml_writes_the_merge(tiny, tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text(f"merge_method: task_arithmetic\nbase_model: {tiny / 'base'}\nmodels:\n"
                    f"  - {{model: {tiny / 'a'}, parameters: {{weight: 1.0}}}}\n"
                    f"  - {{model: {tiny / 'b'}, parameters: {{weight: 3.0}}}}\n"
                    "parameters: {normalize: true, lambda: 2.0}\ndtype: bfloat16\nshard_size: 30kB\n")
    out = merge_from_yaml(path)
    assert out == tmp_path / "merged"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    merged = {}
    for shard in set(index["weight_map"].values()):
        merged.update(load_file(out / shard))
    base, a, b = (load_file(tiny / name / "model.safetensors") for name in ("base", "a", "b"))
    assert merged.keys() == base.keys()
    for name, tensor in base.items():
        # 2 * (a - base + 3 (b - base)) / 4, written in bfloat16
        expected = (tensor + 0.5 * ((a[name] - tensor) + 3 * (b[name] - tensor))).to(torch.bfloat16)
        assert merged[name].dtype == torch.bfloat16
        torch.testing.assert_close(merged[name], expected, rtol=0, atol=0, msg=name)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert (out / "tokenizer.json").is_file()


def test_models_that_do_not_merge_raise_merge_error(tiny, tmp_path):
    (tmp_path / "other").mkdir()
    build_tiny(tmp_path / "other", seed=1, hidden=32)
    path = tmp_path / "merge.yaml"
    path.write_text(f"merge_method: ties\nbase_model: {tiny / 'base'}\nmodels: [{{model: {tmp_path / 'other'}}}]\n")
    with pytest.raises(MergeError, match=r"merge.yaml: .*does not match the base's"):
        merge_from_yaml(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def reshaped(base, out):
    """The base with one tensor of another shape, its config unchanged."""
    weights = load_file(base / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"][:-1]
    return with_weights(base, out, weights)


def with_extra_tensor(base, out):
    weights = load_file(base / "model.safetensors")
    weights["model.extra.weight"] = torch.zeros(3)
    return with_weights(base, out, weights)


def with_weights(base, out, weights):
    from safetensors.torch import save_file

    out.mkdir()
    save_file(weights, out / "model.safetensors")
    (out / "config.json").write_bytes((base / "config.json").read_bytes())
    return out


@pytest.mark.parametrize("make,mismatch", [
    (lambda base, out: build_tiny(out, seed=1, layers=3), "config num_hidden_layers 3 does not match the base's 2"),
    (lambda base, out: build_tiny(out, seed=1, hidden=32), "config hidden_size 32 does not match the base's 64"),
    (reshaped, r"model.norm.weight of shape \[63\] does not match the base's \[64\]"),
    (with_extra_tensor, "has tensor 'model.extra.weight', which the base has not"),
])
def test_a_model_unlike_the_base_is_refused_naming_it_and_the_first_mismatch(tiny, tmp_path, capfd, make, mismatch):
    from protege.cli import main

    other = make(tiny / "base", tmp_path / "other")
    capfd.readouterr()  # building it reports progress
    path = tmp_path / "merge.yaml"
    path.write_text(f"merge_method: task_arithmetic\nbase_model: {tiny / 'base'}\nmodels: [{{model: {other}}}]\n")
    with pytest.raises(MergeError, match=f"merge.yaml: {other}: {mismatch}"):
        merge_from_yaml(path, tmp_path / "out")
    assert main(["merge", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(other) in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_configs_compare_as_transformers_reads_them(tiny, tmp_path):
    """A base saved by transformers 4 (rope_theta at the top) is the same network as its fine-tune saved
    by transformers 5 (rope_theta in rope_parameters)."""
    import shutil

    old = tmp_path / "old-base"
    shutil.copytree(tiny / "base", old)
    config = json.loads((old / "config.json").read_text())
    config["rope_theta"] = config.pop("rope_parameters")["rope_theta"]
    config["torch_dtype"], config["transformers_version"] = config.pop("dtype"), "4.46.0"
    (old / "config.json").write_text(json.dumps(config))
    path = tmp_path / "merge.yaml"
    path.write_text(f"merge_method: task_arithmetic\nbase_model: {old}\nmodels: [{{model: {tiny / 'a'}}}]\n")
    assert (merge_from_yaml(path) / "model.safetensors").is_file()


def test_merge_replaces_only_its_own_unchanged_output(tiny, tmp_path, capfd):
    from protege.cli import main

    path = tmp_path / "merge.yaml"
    path.write_text(f"merge_method: task_arithmetic\nbase_model: {tiny / 'base'}\nmodels: [{{model: {tiny / 'a'}}}]\n")
    out = tmp_path / "merged"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["merge", str(path)]) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{out}: exists and is not a merge protege wrote" in err, err
    assert (out / "notes.txt").read_text() == "mine"
    assert main(["merge", str(path), "--overwrite"]) == 0
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
    assert main(["merge", str(path)]) == 0  # its own output, as it wrote it
    (out / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="exists and is not a merge protege wrote there"):
        merge_from_yaml(path)
    assert (out / "config.json").read_text() == "{}"
    file_out = tmp_path / "file"
    file_out.write_text("mine")
    assert main(["merge", str(path), "--out", str(file_out)]) == 2
    assert file_out.read_text() == "mine"


def test_merged_files_and_folders_follow_the_umask(tiny, tmp_path):
    import os
    import stat

    path = tmp_path / "merge.yaml"
    path.write_text(f"merge_method: task_arithmetic\nbase_model: {tiny / 'base'}\nmodels: [{{model: {tiny / 'a'}}}]\n"
                    "shard_size: 100kB\n")
    previous = os.umask(0o027)
    try:
        out = merge_from_yaml(path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o640}
    assert len(list(out.glob("*.safetensors"))) > 1


# --- per-model parameters, by hand -----------------------------------------------------------------

def test_ties_density_per_model_by_hand():
    base = torch.zeros(1, 4)
    first, second = T([[4.0, -1, 2, -3]]), T([[-2.0, 3, -1, 5]])
    # first keeps 1 of 4 ([4,0,0,0]), second 3 of 4 ([-2,3,0,5]); signs elected [+,+,0->+,+]
    merged = MERGE.get("ties")(base, [first, second], [1.0, 1.0], density=[0.25, 0.75])
    assert torch.equal(merged, T([[4.0, 3, 0, 5]]))
    # a density above 0 keeps at least one entry (int(0.1 * 4) = 0), as mergekit does
    assert torch.equal(MERGE.get("ties")(base, [first], [1.0], density=0.1), T([[4.0, 0, 0, 0]]))


def test_dare_drop_per_model():
    base, model = torch.zeros(1, 400), torch.ones(1, 400)
    merged = MERGE.get("dare")(base, [model, model], [1.0, 0.0], name="w", drop=[0.0, 0.99])
    # the first model drops nothing, the second (weight 0) contributes nothing
    assert torch.equal(merged, model)
    merged = MERGE.get("dare")(base, [model, model], [0.0, 1.0], name="w", drop=[0.0, 0.5])
    assert set(merged.flatten().tolist()) == {0.0, 2.0}


def test_breadcrumbs_counts_from_density_as_mergekit():
    base = torch.zeros(1, 10)
    delta = T([[-1.0, 2, -3, 4, 5, -6, 7, 8, -9, 10]])
    # density 0.5 keeps 5, beta 0.2 drops the 2 largest (|10|, |9|): the bottom drop is the 3 left
    merged = MERGE.get("breadcrumbs")(base, [delta], [1.0], beta=0.2, density=0.5)
    assert torch.equal(merged, T([[0.0, 0, 0, 4, 5, -6, 7, 8, 0, 0]]))
    # keep 8 with 4 outliers cannot both hold: mergekit keeps the 8 smallest
    merged = MERGE.get("breadcrumbs")(base, [delta], [1.0], beta=0.4, density=0.8)
    assert torch.equal(merged, T([[-1.0, 2, -3, 4, 5, -6, 7, 8, 0, 0]]))
    # per model: the second model drops no outliers and keeps all
    merged = MERGE.get("breadcrumbs")(base, [delta, delta], [1.0, 1.0], beta=[0.2, 0.0], density=[0.5, 1.0])
    assert torch.equal(merged, T([[-1.0, 2, -3, 8, 10, -12, 14, 16, -9, 10]]))
