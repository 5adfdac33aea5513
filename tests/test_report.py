"""report.html: rendered from a run directory built by hand, checked as text and in headless Chromium."""

import os
import json
import re
from pathlib import Path

import pytest

from protege.report import plots
from protege.report.html import (body_data, check_in_browser, csp_hash, example_items, find_chromium, loss_curve,
                                 removals_by_reason, resolve, screenshot, source_counts, write_report)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
XSS = "<script>alert('pwned')</script>"
# The README's test command installs Debian's chromium, so a missing browser is a failure, not a skip;
# PROTEGE_NO_BROWSER=1 skips these tests on a machine where it cannot be installed.
needs_chromium = pytest.mark.skipif(os.environ.get("PROTEGE_NO_BROWSER") == "1", reason="PROTEGE_NO_BROWSER=1")


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def records(scores: list[int], predictions: list[str]) -> list[dict]:
    inputs = ["2024/01/05", "5 Jan 2024", "Jan 5th, 24", "the fifth of January"]
    return [{"id": f"t{i}", "input": inputs[i], "reference": "2024-01-05", "prediction": p, "score": s,
             "details": {}} for i, (s, p) in enumerate(zip(scores, predictions))]


def chat(record_id: str, source: str, round_: int) -> dict:
    return {"id": record_id, "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
            "meta": {"source": source, "round": round_}}


def train_log(path: Path, losses: list[float]) -> str:
    history = [{"loss": loss, "step": step, "epoch": step / 10, "learning_rate": 1e-4}
               for step, loss in enumerate(losses, 1)]
    history.append({"train_loss": sum(losses) / len(losses), "train_runtime": 3.0, "step": len(losses)})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"metrics": {"train_loss": 1.0}, "history": history}))
    return str(path)


@pytest.fixture
def run_dir(tmp_path, monkeypatch) -> Path:
    """A finished two-round run as the pipeline writes it; paths relative to where it ran (tmp_path)."""
    run = tmp_path / "runs" / "dates"
    monkeypatch.chdir(tmp_path.parent)  # the report must find relative paths from the run, not the cwd
    rel = lambda p: str(Path(p).relative_to(tmp_path))  # noqa: E731
    base = rel(write_jsonl(run / "eval-base" / "records.jsonl", records([0, 0, 1, 0], ["x", "y", "2024-01-05", "z"])))
    teacher = str(write_jsonl(run / "eval-teacher" / "records.jsonl", records([1, 1, 1, 0], ["2024-01-05"] * 4)))
    r0 = rel(write_jsonl(run / "eval-r0" / "records.jsonl",
                         records([1, 1, 1, 0], ["2024-01-05", "2024-01-05", "2024-01-05", XSS])))
    r1 = rel(write_jsonl(run / "eval-r1" / "records.jsonl", records([1, 1, 1, 1], ["2024-01-05"] * 4)))
    data0 = rel(write_jsonl(run / "curate-r0" / "train.jsonl",
                            [chat("s1", "seed", 0), chat("s2", "seed", 0)] + [chat(f"t{i}", "teacher", 0)
                                                                              for i in range(3)]))
    data1 = rel(write_jsonl(run / "curate-r1" / "train.jsonl",
                            [chat("s1", "seed", 0), chat("s2", "seed", 0)] + [chat(f"t{i}", "teacher", 0)
                                                                              for i in range(3)]
                            + [chat("f1", "failure-round-1", 1), chat("f2", "failure-round-1", 1)]))
    removed0 = rel(write_jsonl(run / "curate-r0" / "removed.jsonl", [{"id": "t9", "reason": "duplicate", "of": "t1"},
                                                                     {"id": "t8", "reason": "in test set"}]))
    removed1 = rel(write_jsonl(run / "curate-r1" / "removed.jsonl", [{"id": "f3", "reason": "duplicate", "of": "f1"}]))
    forgetting0 = {"probe_base": 0.6, "probe_student": 0.58, "probe_change": -0.02, "probe_change_ci": [-0.06, 0.02],
                   "negative_flips": 2, "negative_flip_rate": 0.04, "positive_flips": 1, "perplexity_base": 12.0,
                   "perplexity_student": 12.156, "perplexity_ratio": 1.013}
    forgetting1 = {**forgetting0, "probe_student": 0.52, "probe_change": -0.08, "probe_change_ci": [-0.12, -0.04],
                   "negative_flips": 5, "negative_flip_rate": 0.1, "perplexity_ratio": 1.2}
    summary = {
        "task": "dates", "metric": "exact", "test_items": 4, "confidence": 0.95,
        "base": {"accuracy": 0.25, "ci": [0.0, 0.5], "records": base},
        "teacher": {"accuracy": 0.75, "ci": [0.5, 1.0], "records": teacher},
        "forgetting_base": {"probe_accuracy": 0.6, "perplexity": 12.0}, "forgetting_limit": 0.05,
        "rounds": [
            {"round": 0, "model": "m0", "train_examples": 5, "new_examples": 5, "test_accuracy": 0.75,
             "test_ci": [0.5, 1.0], "dev_accuracy": 0.82, "test_records": r0, "failures": 1, "teacher_requests": 40,
             "train_log": rel(train_log(run / "train-r0" / "train_log.json", [2.0, 1.5, 1.1])), "data": data0,
             "removed": removed0, "forgetting": forgetting0, "over_forgetting_limit": False},
            {"round": 1, "model": "m1", "train_examples": 7, "new_examples": 2, "test_accuracy": 1.0,
             "test_ci": [1.0, 1.0], "dev_accuracy": 0.9, "test_records": r1, "failures": 0, "teacher_requests": 64,
             "train_log": rel(train_log(run / "train-r1" / "train_log.json", [1.2, 0.9, 0.7])), "data": data1,
             "removed": removed1, "forgetting": forgetting1, "over_forgetting_limit": True,
             "stop": "round 1 forgot more than the limit"}],
        "student": {"round": 0, "accuracy": 0.75, "ci": [0.5, 1.0], "model": "m0"},
        "vs_teacher": {"diff": 0.0, "low": -0.25, "high": 0.25, "significant": False},
        "vs_base": {"diff": 0.5, "low": 0.25, "high": 0.75, "significant": True},
        "judge": {"pointwise": {"student": {"mean_score": 7.25, "ci": [6.5, 8.0]},
                                "teacher": {"mean_score": 8.5, "ci": [8.0, 9.0]},
                                "base": {"mean_score": 3.125, "ci": [2.0, 4.0]}},
                  "pairwise": {"wins": {"student": 1, "teacher": 2}, "ties": 1, "inconsistent": 0,
                               "position_disagreement_rate": 0.25, "win_rate": {"student": 0.25}}},
        "teacher_requests": {"budget": 100, "spent": 64, "paid_this_run": 70},
        "wall_seconds": 12.5, "device": "cpu"}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def section(html: str, table_id: str) -> str:
    start = html.index(f'<table id="{table_id}">')
    return html[start:html.index("</table>", start)]


def cells(row_html: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row_html, re.S)]


def table_rows(html: str, table_id: str) -> list[list[str]]:
    return [cells(row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", section(html, table_id), re.S)]


def test_report_shows_the_run(run_dir):
    out = write_report(run_dir)
    assert out == run_dir / "report.html"
    html = out.read_text()
    rows = table_rows(html, "results")
    assert rows[1][:3] == ["base student", "25.0%", "[0.0%, 50.0%]"]
    assert rows[2][:3] == ["teacher", "75.0%", "[50.0%, 100.0%]"]
    assert rows[3] == ["student, round 0kept", "75.0%", "[50.0%, 100.0%]", "82.0%", "40", "5 (5)",
                       "-2.0 pts [-6.0, +2.0]", "4.0% (2)", "1.013"]
    assert rows[4][0] == "student, round 1over forgetting limit"
    assert rows[4][6:] == ["-8.0 pts [-12.0, -4.0]", "10.0% (5)", "1.200"]
    assert "Student vs teacher: +0.0 pts, 95% interval [-25.0, +25.0] pts:" in html
    assert "not significant" in html and "<strong>significant</strong>" in html
    assert "Stopped: round 1 forgot more than the limit" in html


def test_report_shows_judge_data_and_examples(run_dir):
    html = write_report(run_dir).read_text()
    assert ["student", "7.25", "[6.50, 8.00]"] in table_rows(html, "judge-pointwise")
    assert ["position disagreement rate", "25.0%"] in table_rows(html, "judge-pairwise")
    sources = table_rows(html, "sources")
    assert ["failure-round-1", "0", "2"] in sources and ["teacher", "3", "3"] in sources
    assert sources[-1] == ["total", "5", "7"]
    duplicate = next(row for row in table_rows(html, "removals") if row[0] == "duplicate")
    assert duplicate[1:4] == ["1", "1", "2"] and "t9" in duplicate[4]
    fixed, failing = html.index("Fixed:"), html.index("Still failing:")
    assert html.count("5 Jan 2024", fixed, failing) == 1 and html.count("the fifth of January", failing) == 1


def test_report_is_self_contained_and_escapes_predictions(run_dir):
    html = write_report(run_dir).read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?://""", html, re.I)
    assert html.count('<img src="data:image/png;base64,') == 3
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in html
    assert XSS not in html


def test_old_run_without_optional_keys_renders(tmp_path):
    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    summary = {"task": "old", "metric": "exact", "test_items": 10, "base": {"accuracy": 0.1},
               "teacher": {"accuracy": 0.9},
               "rounds": [{"round": 0, "model": "m", "train_examples": 8, "new_examples": 8, "test_accuracy": 0.5,
                           "dev_accuracy": 0.6, "test_records": "gone/records.jsonl", "failures": None,
                           "teacher_requests": 20, "stop": "1 rounds done"}],
               "student": {"round": 0, "accuracy": 0.5, "model": "m"},
               "teacher_requests": {"budget": 50, "spent": 20, "paid_this_run": 20}, "wall_seconds": 3.0,
               "device": "cpu"}
    (run / "summary.json").write_text(json.dumps(summary))
    html = write_report(run).read_text()
    assert table_rows(html, "results")[3][:4] == ["student, round 0kept", "50.0%", "", "60.0%"]
    assert html.count("<img ") == 1  # accuracy only: no training logs, no data
    assert "no training curves" in html and "no data plot" in html and "No curation record" in html
    assert "test records are not available" in html and "50.0% held-out." in html


def test_resolve_tries_given_then_run_parent(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "r"
    target = run / "eval" / "records.jsonl"
    target.parent.mkdir(parents=True)
    target.write_text("")
    monkeypatch.chdir(tmp_path / "runs")
    assert resolve("r/eval/records.jsonl", run) == Path("r/eval/records.jsonl")
    assert resolve("runs/r/eval/records.jsonl", run) == target
    assert resolve(str(target), run) == target
    assert resolve("runs/r/missing.jsonl", run) is None and resolve(None, run) is None


def test_helpers_by_hand():
    assert loss_curve({"history": [{"loss": 2.0, "step": 1}, {"loss": 1.0, "step": 2},
                                   {"train_loss": 1.5, "step": 2}]}) == [(1, 2.0), (2, 1.0)]
    assert loss_curve(None) == []
    assert source_counts([chat("a", "seed", 0), chat("b", "teacher", 0), chat("c", "seed", 0),
                          {"id": "d", "messages": []}]) == {"seed": 2, "teacher": 1, "unknown": 1}
    groups = removals_by_reason({"round 0": [{"id": "a", "reason": "short"}, {"id": "b", "reason": "duplicate"}],
                                 "round 1": [{"id": "c", "reason": "duplicate", "of": "a"}]})
    assert [(g["reason"], g["total"], dict(g["counts"])) for g in groups] == [
        ("duplicate", 2, {"round 0": 1, "round 1": 1}), ("short", 1, {"round 0": 1})]
    assert groups[0]["examples"] == [{"id": "b"}, {"id": "c", "of": "a"}]
    base = [{"id": i, "score": score} for i, score in enumerate([0, 1, 0, 0.5])]
    student = [{"id": i, "score": score} for i, score in enumerate([1, 1, 0, 1])]
    fixed, failing = example_items(base, student)
    assert [(e["base"]["id"], e["item"]["id"]) for e in fixed] == [(0, 0), (3, 3)]
    assert [(e["base"]["id"], e["item"]["id"]) for e in failing] == [(2, 2)]
    assert example_items([], student)[0] == [] and len(example_items([], [{"score": 0}])[1]) == 1


def test_error_bars_and_csp_hash_by_hand():
    below, above = plots.error_bar_lengths([0.5, 0.2, 0.5], [[0.25, 0.75], None, [0.55, 0.9]])
    assert below == pytest.approx([0.25, 0.0, 0.0]) and above == pytest.approx([0.25, 0.0, 0.4])
    # SHA-256 of "abc" (FIPS 180-2 test vector) in base64
    assert csp_hash("abc") == "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
    assert body_data('<html><body data-loaded="ok" data-images="3" class="x"><p>') == {"loaded": "ok", "images": 3}


def test_plots_are_pngs_or_none():
    rounds = [{"round": 0, "test_accuracy": 0.5, "test_ci": [0.3, 0.7], "teacher_requests": 10,
               "forgetting": {"probe_change": -0.01, "probe_change_ci": [-0.03, 0.01]}}]
    assert plots.accuracy_plot(rounds, 0.1, 0.9, 0.05).startswith(PNG_SIGNATURE)
    assert plots.training_curves_plot({"round 0": [(1, 2.0), (2, 1.0)]}).startswith(PNG_SIGNATURE)
    assert plots.data_sources_plot({"round 0": {"seed": 2, "teacher": 3}}).startswith(PNG_SIGNATURE)
    assert plots.accuracy_plot([], 0.1, 0.9) is None
    assert plots.training_curves_plot({"round 0": []}) is None
    assert plots.data_sources_plot({"round 0": {}}) is None
    assert plots.x_axis([{"round": 0}, {"round": 1, "teacher_requests": 5}]) == ([0, 1], "round")


@needs_chromium
def test_report_loads_in_chromium(run_dir):
    html = write_report(run_dir)
    seen = check_in_browser(html)
    height = seen.pop("height")
    assert seen == {"loaded": "ok", "images": 3, "broken": 0, "errors": 0} and height > 1000
    png = screenshot(html, run_dir / "report.png")
    assert png == run_dir / "report.png" and png.read_bytes().startswith(PNG_SIGNATURE)
    assert int.from_bytes(png.read_bytes()[20:24], "big") == height  # the whole page, not a window of it
    assert png.stat().st_size > 10_000  # a blank page compresses to a few hundred bytes


@needs_chromium
def test_browser_check_sees_broken_images_and_blocks_injected_scripts(run_dir):
    """The check can fail: a broken image is counted, and a script that escaped escaping does not run."""
    html = write_report(run_dir)
    tampered = html.with_name("tampered.html")
    tampered.write_text(html.read_text().replace(
        "<main>", '<main><img src="data:image/png;base64,AAAA"><script>document.body.dataset.injected = 1</script>'))
    seen = check_in_browser(tampered)
    assert seen["broken"] == 1 and seen["images"] == 4 and "injected" not in seen
