"""The merge sweep that ends a run: the kept student merged back toward its base at several strengths,
each evaluated like a round, and the best on dev inside the forgetting limit kept."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from protege.cli import main
from protege.loop.results import Sweep, SweepPoint
from protege.loop.selection import keep_best, kept_student

from candidates import candidate, round_result
from test_e2e import FAST


def point(strength, dev, change, over, test=0.5):
    return SweepPoint(strength, candidate(dev, test, change, over, model=f"m{strength}", records=f"r{strength}"))


def closer(p):
    return -p.strength


def test_keep_best_takes_the_best_dev_inside_the_limit_and_the_weaker_merge_on_a_tie():
    points = [point(1.0, 0.9, -0.3, True), point(0.6, 0.8, -0.08, False), point(0.4, 0.8, -0.04, False),
              point(0.2, 0.5, -0.01, False)]
    assert keep_best(points, closer).strength == 0.4  # 0.6 ties on dev but forgets more
    points[2] = point(0.4, 0.7, -0.04, False)
    assert keep_best(points, closer).strength == 0.6
    points = [point(p.strength, p.candidate.dev_accuracy, p.candidate.forgetting.probe_change, True) for p in points]
    assert keep_best(points, closer).strength == 0.2  # none inside: the one that forgot least


def test_kept_student_is_the_sweeps_choice_with_its_own_test_score():
    rounds = [round_result(0, dev=0.9, test=0.95, change=-0.3, over=True, model="m1.0", records="r1.0")]
    sweep = Sweep("task_arithmetic", {}, 0, [SweepPoint(1.0, rounds[0].candidate),
                                             point(0.5, 0.85, -0.02, False, test=0.9)], chosen=0.5)
    student = kept_student(rounds, sweep, Path("base"))
    assert student.merge == {"method": "task_arithmetic", "strength": 0.5}
    assert (student.scored.accuracy, student.candidate.model, student.scored.records) == \
        (0.9, Path("m0.5"), Path("r0.5"))
    assert kept_student(rounds, replace(sweep, chosen=1.0), Path("base")).merge is None
    assert kept_student(rounds, None, Path("base")).candidate.model == Path("m1.0")


def test_strengths_must_lie_strictly_between_0_and_1():
    from protege.config import MergeSweepConfig
    assert MergeSweepConfig(strengths=[0.3, 0.7, 0.3]).strengths == [0.7, 0.3]
    with pytest.raises(ValueError, match="between 0 and 1"):
        MergeSweepConfig(strengths=[1.0])


def test_run_ends_with_a_sweep_that_merges_toward_the_base(tmp_path, examples_dir):
    run_dir = tmp_path / "run"
    assert main(["run", str(examples_dir / "iso-dates"), "--run-dir", str(run_dir), *FAST, "--set", "rounds=1",
                 "--set", "forgetting.limit=0.5", "--set", "merge.strengths=[0.5]",
                 "--set", "export.formats=[hf,gguf]", "--set", "export.gguf_dtype=f32"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    sweep = summary["merge_sweep"]
    assert [p["strength"] for p in sweep["points"]] == [1.0, 0.5]
    inside = [p for p in sweep["points"] if not p["over_forgetting_limit"]]
    assert sweep["chosen"] == max(inside, key=lambda p: (p["dev_accuracy"], -p["strength"]))["strength"]
    half = Path(sweep["points"][1]["model"])
    assert half.parent.name.startswith("merge-0.5")
    assert_halfway(half, Path(summary["rounds"][0]["model"]), tmp_path)
    assert "merged at 0.5" in (run_dir / "summary.md").read_text()
    assert 'id="merge-sweep"' in (run_dir / "report.html").read_text()
    assert_exported_the_kept_student(run_dir, summary, tmp_path)


def assert_exported_the_kept_student(run_dir: Path, summary: dict, tmp_path: Path):
    """protege run wrote export/ (hf and a checked GGUF) of the student it kept; protege export takes a
    run directory for its kept student, and a round's LoRA adapter with its base from the run."""
    from transformers import AutoModelForCausalLM
    exported = json.loads((run_dir / "export" / "export.json").read_text())
    assert exported["model"] == summary["student"]["model"] and exported["gguf"]["passed"]
    kept = AutoModelForCausalLM.from_pretrained(run_dir / "export" / "hf")
    assert kept.config.num_hidden_layers == 2
    assert main(["export", str(run_dir), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "hf" / "model.safetensors").read_bytes() == \
        (run_dir / "export" / "hf" / "model.safetensors").read_bytes()
    adapter = summary["rounds"][0]["model"]
    assert main(["export", adapter, "--out", str(tmp_path / "adapter"), "--format", "adapter"]) == 0
    assert (tmp_path / "adapter" / "adapter" / "adapter_config.json").is_file()


def assert_halfway(merged: Path, adapter: Path, scratch: Path):
    """Each merged weight is base + 0.5 * (student - base), the student being the adapter merged in."""
    from protege.models import model_dir, save_merged
    base = model_dir("tiny:0")
    student = load_file(save_merged(base, adapter, scratch / "student") / "model.safetensors")
    origin, half = load_file(base / "model.safetensors"), load_file(merged / "model.safetensors")
    name = next(n for n in origin if "q_proj" in n)
    assert not torch.equal(student[name], origin[name])
    torch.testing.assert_close(half[name], origin[name] + 0.5 * (student[name] - origin[name]))
