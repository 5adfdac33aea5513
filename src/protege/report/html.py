"""report.html: one self-contained page a user can trust and share (plots inline, no external URL), and
the headless-Chromium checks that it loads, draws its plots and raises no script error."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import tempfile
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import jinja2

from ..runs import JSONLError, read_json, read_jsonl, write_atomic
from . import plots

TEMPLATE = "template.html.j2"
EXAMPLES_SHOWN = 5
REMOVED_EXAMPLES_SHOWN = 3
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Without these a headless Chromium on a closed network stalls on lookups and update checks.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
CHROMIUM_TIMEOUT = 60


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def resolve(path: str | None, run_dir: Path) -> Path | None:
    """A path from summary.json: the pipeline writes them relative to where it ran, usually the parent of
    runs/NAME, so try it as given, then from there, then inside the run; None when none exists."""
    if not path:
        return None
    for candidate in (Path(path), run_dir.parent.parent / path, run_dir / path):
        if candidate.exists():
            return candidate
    return None


def read_rows(path: str | None, run_dir: Path) -> list[dict]:
    """The rows of a JSONL file named in summary.json; an older or partial run may lack it: no rows."""
    found = resolve(path, run_dir)
    try:
        return read_jsonl(found) if found else []
    except JSONLError:
        return []


def loss_curve(train_log: dict | None) -> list[tuple[int, float]]:
    """(step, loss) from a Trainer's log history; its closing entry reports train_loss, not loss."""
    history = (train_log or {}).get("history", [])
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry and "step" in entry]


def source_counts(records: list[dict]) -> dict[str, int]:
    return dict(Counter((record.get("meta") or {}).get("source", "unknown") for record in records))


def removals_by_reason(removed: dict[str, list[dict]]) -> list[dict]:
    """Curation removals grouped by reason: how many per round and a few examples, most frequent first."""
    groups: dict[str, dict] = {}
    for label, rows in removed.items():
        for row in rows:
            group = groups.setdefault(row.get("reason", "unknown"), {"counts": Counter(), "examples": []})
            group["counts"][label] += 1
            if len(group["examples"]) < REMOVED_EXAMPLES_SHOWN:
                group["examples"].append({key: value for key, value in row.items() if key != "reason"})
    return sorted(({"reason": reason, "total": sum(g["counts"].values()), **g} for reason, g in groups.items()),
                  key=lambda group: -group["total"])


def example_items(base: list[dict], student: list[dict]) -> tuple[list[dict], list[dict]]:
    """(fixed, still failing): items the base got wrong and the kept student right, and items the kept
    student still gets wrong. Records of every model come in the test set's order."""
    pairs = list(zip(base or [None] * len(student), student))
    fixed = [{"item": s, "base": b} for b, s in pairs if b and b["score"] < 1 <= s["score"]]
    failing = [{"item": s, "base": b} for b, s in pairs if s["score"] < 1]
    return fixed[:EXAMPLES_SHOWN], failing[:EXAMPLES_SHOWN]


def transcript(messages: list[dict]) -> str:
    """A whole agent episode as lines a reader follows: who spoke, the calls made and what came back."""
    return "\n".join(transcript_line(m) for m in messages if m.get("role") != "system")


def transcript_line(message: dict) -> str:
    calls = [f"{c['function']['name']}({c['function'].get('arguments', '')})" for c in message.get("tool_calls") or []]
    said = message.get("content") or ""
    return f"{message['role']}: " + " ".join(part for part in [said, *(f"-> {call}" for call in calls)] if part)


def agent_rows(summary: dict) -> list[tuple[str, dict]]:
    """(model, its agent rates) for every model of an agent task's run; empty on a single-turn task."""
    if "agent" not in (summary.get("base") or {}):
        return []
    rows = [("base student", summary["base"]["agent"]), ("teacher", summary["teacher"].get("agent"))]
    rows += [(f"student, round {r['round']}", r.get("test_agent")) for r in summary.get("rounds", [])]
    sweep = summary.get("merge_sweep") or {"points": []}
    rows += [(f"round {sweep['round']} merged at {p['strength']:g}", p.get("test_agent")) for p in sweep["points"][1:]]
    return [(label, rates) for label, rates in rows if rates]


def inline_png(png: bytes | None) -> str | None:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii") if png else None


def report_context(summary: dict, run_dir: Path) -> dict:
    """Everything the template shows, the files summary.json names read in."""
    rounds = summary.get("rounds", [])
    labels = {r["round"]: f"round {r['round']}" for r in rounds}
    kept = next((r for r in rounds if r["round"] == (summary.get("student") or {}).get("round")), None)
    data = {labels[r["round"]]: source_counts(read_rows(r.get("data"), run_dir)) for r in rounds}
    removed = {labels[r["round"]]: read_rows(r.get("removed"), run_dir) for r in rounds}
    logs = {labels[r["round"]]: _read_log(r.get("train_log"), run_dir) for r in rounds}
    kept_records = read_rows((summary.get("student") or {}).get("records"), run_dir) or \
        (read_rows(kept.get("test_records"), run_dir) if kept else [])
    fixed, failing = example_items(read_rows((summary.get("base") or {}).get("records"), run_dir), kept_records)
    return {"summary": summary, "metric": _metric_name(summary.get("metric")), "kept": kept,
            "stop": next((r["stop"] for r in reversed(rounds) if r.get("stop")), None),
            "sources": data, "source_names": sorted({s for counts in data.values() for s in counts}),
            "removals": removals_by_reason(removed),
            "removals_recorded": any(resolve(r.get("removed"), run_dir) for r in rounds),
            "fixed": fixed, "failing": failing, "examples_recorded": bool(kept_records),
            "agent_rows": agent_rows(summary),
            "plots": _plots(summary, data, logs)}


def _plots(summary: dict, data: dict, logs: dict) -> dict:
    return {"accuracy": inline_png(plots.accuracy_plot(summary.get("rounds", []),
                                                       (summary.get("base") or {}).get("accuracy"),
                                                       (summary.get("teacher") or {}).get("accuracy"),
                                                       summary.get("forgetting_limit"))),
            "training": inline_png(plots.training_curves_plot({k: loss_curve(v) for k, v in logs.items()})),
            "data": inline_png(plots.data_sources_plot(data)),
            "sweep": inline_png(plots.merge_sweep_plot(summary.get("merge_sweep"), summary.get("forgetting_limit")))}


def _read_log(path: str | None, run_dir: Path) -> dict | None:
    found = resolve(path, run_dir)
    try:
        return read_json(found) if found else None
    except ValueError:  # a log cut short by a crash: no curve rather than no report
        return None


def _metric_name(metric) -> str:
    return metric.get("name", "") if isinstance(metric, dict) else str(metric or "")


def csp_hash(script: str) -> str:
    """The Content-Security-Policy source that lets exactly this inline script run and no other, so a
    prediction that slipped past escaping still could not execute."""
    return "sha256-" + base64.b64encode(hashlib.sha256(str(script).encode("utf-8")).digest()).decode("ascii")


def render(context: dict) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=_pct, points=_points, interval=_interval, level=_level, csp_hash=csp_hash,
                       transcript=transcript)
    return env.get_template(TEMPLATE).render(**context)


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    summary = read_json(run_dir / "summary.json")
    out = run_dir / "report.html"
    write_atomic(out, render(report_context(summary, run_dir)))
    return out


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _pct(value) -> str:
    return f"{value:.1%}" if _number(value) else "—"


def _signed(value) -> str:
    """A difference of two accuracies in percentage points, with its sign."""
    return f"{value * 100:+.1f}" if _number(value) else "—"


def _points(value) -> str:
    return f"{_signed(value)} pts" if _number(value) else "—"


def _interval(ci, unit: str = "pct") -> str:
    """[low, high] as percentages, or as signed percentage points (unit="points") for differences."""
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2):
        return ""
    if unit == "points":
        return f"[{_signed(ci[0])}, {_signed(ci[1])}]"
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def _level(confidence) -> str:
    """A confidence level as people write it: 0.95 -> 95%."""
    return f"{confidence * 100:g}%" if _number(confidence) else "—"


def _chromium(*args: str) -> subprocess.CompletedProcess:
    browser = find_chromium()
    if browser is None:
        raise RuntimeError("Chromium not found: install Debian's chromium package to check the report")
    with tempfile.TemporaryDirectory(prefix="protege-chromium-") as profile:
        return subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT, check=True)


def screenshot(html: Path, png: Path, height: int | None = None) -> Path:
    """The whole page: its height is what the load check measured (check_in_browser; measured here when
    the caller has not), capped so a runaway page cannot ask for a giant image."""
    png = Path(png).resolve()
    height = min(int(height or check_in_browser(html).get("height") or 2400), 12000)
    _chromium(f"--screenshot={png}", f"--window-size=1280,{height}", "--hide-scrollbars",
              Path(html).resolve().as_uri())
    if not png.is_file():
        raise RuntimeError(f"{png}: Chromium wrote no screenshot")
    return png


def check_in_browser(html: Path) -> dict:
    """What the page's load check wrote on <body> once loaded: data-loaded ("ok", or "error" after a
    script error), data-images, data-broken (images that failed to decode), data-errors."""
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", Path(html).resolve().as_uri()).stdout
    return body_data(dom)


class _BodyAttributes(HTMLParser):
    def __init__(self):
        super().__init__()
        self.found: dict | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "body" and self.found is None:
            self.found = {name.removeprefix("data-"): value for name, value in attrs if name.startswith("data-")}


def body_data(dom: str) -> dict:
    """The data-* attributes of <body>, counts as ints: {"loaded": "ok", "images": 3, "broken": 0, ...}."""
    parser = _BodyAttributes()
    parser.feed(dom)
    return {name: int(value) if value and value.isdigit() else value for name, value in (parser.found or {}).items()}
