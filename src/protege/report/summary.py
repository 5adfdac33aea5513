"""summary.md and the table a run ends with: base / teacher / student per round, with intervals
and what each student lost of general ability."""

from __future__ import annotations


def _score(accuracy: float, ci: list | None) -> str:
    return f"{accuracy:.1%} [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else f"{accuracy:.1%}"


def _lost(forgetting: dict | None) -> tuple[str, str]:
    """Negative-flip rate and perplexity ratio cells."""
    if not forgetting:
        return "-", "-"
    ratio = forgetting.get("perplexity_ratio")
    return f"{forgetting['negative_flip_rate']:.1%}", f"{ratio:.3f}" if ratio is not None else "-"


def _probe_cell(lost: dict | None) -> str:
    return f"{lost['probe_student']:.1%} ({lost['probe_change']:+.1%})" if lost else "-"


def _agent_cells(rates: dict | None) -> tuple[str, ...]:
    """Valid calls, tool errors and turns of an agent task's model, with intervals."""
    if not rates:
        return "-", "-", "-"
    turns_low, turns_high = rates["mean_turns_ci"]
    return (_score(rates["valid_call_rate"], rates["valid_call_ci"]),
            _score(rates["tool_error_rate"], rates["tool_error_ci"]),
            f"{rates['mean_turns']:.2f} [{turns_low:.2f}, {turns_high:.2f}]")


def _candidate_row(label: str, candidate: dict, kept: bool, agent: bool) -> tuple[str, ...]:
    over = " (over limit)" if candidate.get("over_forgetting_limit") else ""
    lost = candidate.get("forgetting")
    cells = (f"{label}{' (kept)' if kept else ''}{over}", _score(candidate["test_accuracy"], candidate.get("test_ci")))
    return cells + (_agent_cells(candidate.get("test_agent")) if agent else ()) + (_probe_cell(lost), *_lost(lost))


def _reference_row(label: str, scored: dict, probe: str, agent: bool) -> tuple[str, ...]:
    cells = (label, _score(scored["accuracy"], scored.get("ci")))
    return cells + (_agent_cells(scored.get("agent")) if agent else ()) + (probe, "-", "-")


def is_agent_task(summary: dict) -> bool:
    return "agent" in summary["base"]


def table_rows(summary: dict) -> list[tuple[str, ...]]:
    base_probe = summary.get("forgetting_base")
    probe = f"{base_probe['probe_accuracy']:.1%}" if base_probe else "-"
    agent = is_agent_task(summary)
    rows = [_reference_row("base student", summary["base"], probe, agent),
            _reference_row("teacher", summary["teacher"], "-", agent)]
    student = summary["student"]
    merged = student.get("merge")
    for r in summary["rounds"]:
        rows.append(_candidate_row(f"student, round {r['round']}", r, r["round"] == student["round"] and not merged,
                                   agent))
    sweep = summary.get("merge_sweep") or {"points": []}
    for point in sweep["points"][1:]:
        kept = bool(merged) and point["strength"] == merged["strength"]
        rows.append(_candidate_row(f"round {sweep['round']} merged at {point['strength']:g} ({sweep['method']})",
                                   point, kept, agent))
    return rows


def results_table(summary: dict) -> str:
    level = summary.get("confidence", 0.95)
    scored = "success" if is_agent_task(summary) else summary["metric"]
    agent = ("valid calls", "tool errors", "turns") if is_agent_task(summary) else ()
    header = ("model", f"held-out {scored} (n={summary['test_items']}) [{level:.0%} CI]", *agent,
              "general probe (change)", "negative flips", "perplexity ratio")
    rows = [header] + table_rows(summary)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def difference_line(name: str, diff: dict | None) -> str:
    if not diff:
        return ""
    verdict = "a real difference" if diff["significant"] else "not a significant difference"
    return (f"Student minus {name}: {diff['diff']:+.1%} [{diff['low']:+.1%}, {diff['high']:+.1%}], "
            f"{verdict} (paired bootstrap).\n")


def merge_words(student: dict) -> str:
    merged = student.get("merge")
    return f", merged back toward the base at {merged['strength']:g} ({merged['method']})" if merged else ""


def summary_markdown(summary: dict) -> str:
    student = summary["student"]
    spent = summary["teacher_requests"]
    limit = summary.get("forgetting_limit")
    limit_line = f"Forgetting limit: {limit:.0%} of probe accuracy.\n" if limit is not None else ""
    return (f"# {summary['task']}\n\n{results_table(summary)}\n\n"
            f"Kept: round {student['round']}{merge_words(student)} ({student['accuracy']:.1%}), "
            f"{student['model']}\n\n"
            f"{difference_line('teacher', summary.get('vs_teacher'))}"
            f"{difference_line('base', summary.get('vs_base'))}{limit_line}\n"
            f"Test items: {summary['test_items']}. Teacher requests for training data: {spent['spent']} of "
            f"the budget of {spent['budget']}; requests sent this run, answering the test set included, "
            f"cache hits excluded: {spent['paid_this_run']}. Wall time: {summary['wall_seconds']} s on "
            f"{summary['device']}.\n")
