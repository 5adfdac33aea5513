"""summary.md: the table a run ends with."""

from __future__ import annotations


def results_table(summary: dict) -> str:
    rows = [("base student", summary["base"]["accuracy"]), ("teacher", summary["teacher"]["accuracy"])]
    rows += [(f"student, round {r['round']}", r["test_accuracy"]) for r in summary["rounds"]]
    width = max(len(name) for name, _ in rows)
    header = f"held-out {summary['metric']} accuracy (n={summary['test_items']})"
    lines = [f"| {'model'.ljust(width)} | {header} |", f"|{'-' * (width + 2)}|{'-' * (len(header) + 2)}|"]
    lines += [f"| {name.ljust(width)} | {f'{acc:.1%}'.rjust(len(header))} |" for name, acc in rows]
    return "\n".join(lines)


def summary_markdown(summary: dict) -> str:
    student = summary["student"]
    spent = summary["teacher_requests"]
    return (f"# {summary['task']}\n\n{results_table(summary)}\n\n"
            f"Kept: round {student['round']} ({student['accuracy']:.1%}), {student['model']}\n\n"
            f"Test items: {summary['test_items']}. Teacher requests for training data: {spent['spent']} of "
            f"the budget of {spent['budget']}; requests sent this run, answering the test set included, "
            f"cache hits excluded: {spent['paid_this_run']}. Wall time: {summary['wall_seconds']} s on "
            f"{summary['device']}.\n")
