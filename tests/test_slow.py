"""The embedded SmolLM2-135M student on iso-dates: the headline numbers of docs/results.md (minutes on CPU)."""

import json

import pytest

from protege.cli import main


@pytest.mark.slow
def test_iso_dates_embedded_learns_the_task_and_the_sweep_wins_back_general_ability(tmp_path, examples_dir):
    assert main(["run", str(examples_dir / "iso-dates"), "--run-dir", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["base"]["accuracy"] < 0.5
    assert max(r["test_accuracy"] for r in summary["rounds"]) >= 0.95
    assert all(r["forgetting"]["perplexity_ratio"] > 0 for r in summary["rounds"])
    sweep = summary["merge_sweep"]
    kept = next(p for p in sweep["points"] if p["strength"] == sweep["chosen"])
    # the kept student is inside the forgetting limit and still far above its base
    assert not kept["over_forgetting_limit"] and kept["test_accuracy"] >= summary["base"]["accuracy"] + 0.5
    assert (tmp_path / "run" / "report.html").is_file()
