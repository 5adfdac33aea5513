"""The embedded SmolLM2-135M student on iso-dates: the README's headline numbers (minutes on CPU)."""

import json

import pytest

from protege.cli import main


@pytest.mark.slow
def test_iso_dates_embedded_reaches_95_percent(tmp_path, examples_dir):
    assert main(["run", str(examples_dir / "iso-dates"), "--run-dir", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["base"]["accuracy"] < 0.5
    assert summary["student"]["accuracy"] >= 0.95
    assert all(r["forgetting"]["perplexity_ratio"] > 0 for r in summary["rounds"])
    assert (tmp_path / "run" / "report.html").is_file()
