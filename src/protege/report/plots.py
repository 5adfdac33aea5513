"""The report's plots, each drawn from summary.json numbers and returned as PNG bytes (None when there is
nothing to draw), so the page can inline them and a test can check them without a run."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

DPI = 100


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)  # pyplot keeps every figure alive until closed
    return buffer.getvalue()


def error_bar_lengths(values: list[float], intervals: list[tuple[float, float] | None]) -> list[list[float]]:
    """matplotlib's yerr rows [below, above] from [low, high] intervals; no interval draws no bar, and an
    interval that misses its point (a bootstrap quirk) never yields a negative length."""
    below, above = [], []
    for value, interval in zip(values, intervals):
        low, high = interval if interval else (value, value)
        below.append(max(0.0, value - low))
        above.append(max(0.0, high - value))
    return [below, above]


def accuracy_plot(rounds: list[dict], base: float | None, teacher: float | None,
                  forgetting_limit: float | None = None) -> bytes | None:
    """Task accuracy per round (summary.json round entries) against teacher requests spent, base and
    teacher as horizontal lines; below it, where measured, the probe-accuracy change (forgetting)."""
    if not rounds:
        return None
    forgetting = [r for r in rounds if (r.get("forgetting") or {}).get("probe_change") is not None]
    fig, axes = plt.subplots(2 if forgetting else 1, 1, figsize=(9, 3.4 * (2 if forgetting else 1)),
                             sharex=True, squeeze=False)
    _draw_accuracy(axes[0][0], rounds, base, teacher)
    if forgetting:
        _draw_forgetting(axes[1][0], forgetting, forgetting_limit)
    axes[-1][0].set_xlabel(x_axis(rounds)[1])
    axes[-1][0].xaxis.set_major_locator(MaxNLocator(integer=True))
    return png_bytes(fig)


def x_axis(rounds: list[dict]) -> tuple[list[int], str]:
    """Teacher requests spent per round; rounds from runs that did not record them fall back to the round."""
    if all("teacher_requests" in r for r in rounds):
        return [r["teacher_requests"] for r in rounds], "teacher requests spent"
    return [r["round"] for r in rounds], "round"


def _draw_accuracy(ax, rounds, base, teacher) -> None:
    requests = x_axis(rounds)[0]
    accuracy = [r["test_accuracy"] for r in rounds]
    ax.errorbar(requests, accuracy, yerr=error_bar_lengths(accuracy, [r.get("test_ci") for r in rounds]),
                marker="o", capsize=4, color="tab:blue", label="student")
    for r, x, y in zip(rounds, requests, accuracy):
        ax.annotate(f"r{r['round']}", (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    if base is not None:
        ax.axhline(base, color="tab:gray", linestyle="--", label=f"base {base:.1%}")
    if teacher is not None:
        ax.axhline(teacher, color="tab:green", linestyle="--", label=f"teacher {teacher:.1%}")
    ax.set_ylim(-0.02, 1.08)  # room above 100% for the round labels
    ax.set_ylabel("held-out accuracy")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def _draw_forgetting(ax, rounds, limit) -> None:
    requests = x_axis(rounds)[0]
    change = [r["forgetting"]["probe_change"] for r in rounds]
    intervals = [r["forgetting"].get("probe_change_ci") for r in rounds]
    ax.errorbar(requests, change, yerr=error_bar_lengths(change, intervals), marker="s", capsize=4,
                color="tab:red", label="probe accuracy change")
    ax.axhline(0, color="black", linewidth=0.8)
    if limit is not None:
        ax.axhline(-limit, color="tab:red", linestyle=":", label=f"forgetting limit -{limit:.0%}")
    ax.set_ylabel("probe accuracy change vs base")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def merge_sweep_plot(sweep: dict | None, limit: float | None) -> bytes | None:
    """Test and dev accuracy against probe change, one point per merge strength: the trade the sweep made."""
    points = [p for p in (sweep or {}).get("points", []) if (p.get("forgetting") or {}).get("probe_change") is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(9, 3.6))
    change = [p["forgetting"]["probe_change"] for p in points]
    ax.plot(change, [p["test_accuracy"] for p in points], marker="o", color="tab:blue", label="test")
    ax.plot(change, [p["dev_accuracy"] for p in points], marker="^", linestyle=":", color="tab:purple", label="dev")
    for p, x in zip(points, change):
        kept = " (kept)" if p["strength"] == sweep["chosen"] else ""
        ax.annotate(f"{p['strength']:g}{kept}", (x, p["test_accuracy"]), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    if limit is not None:
        ax.axvline(-limit, color="tab:red", linestyle=":", label=f"forgetting limit -{limit:.0%}")
    ax.set_xlabel("probe accuracy change vs base (right: less forgetting)")
    ax.set_ylabel("held-out accuracy")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return png_bytes(fig)


def training_curves_plot(curves: dict[str, list[tuple[int, float]]]) -> bytes | None:
    """Training loss against step, one line per round ({label: [(step, loss), ...]})."""
    curves = {label: points for label, points in curves.items() if points}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(9, 3.4))
    for label, points in curves.items():
        steps, losses = zip(*points)
        ax.plot(steps, losses, marker=".", label=label)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png_bytes(fig)


def data_sources_plot(counts: dict[str, dict[str, int]]) -> bytes | None:
    """Training examples per round stacked by meta.source ({round label: {source: count}})."""
    if not any(counts.values()):
        return None
    labels = list(counts)
    sources = sorted({source for per_round in counts.values() for source in per_round})
    fig, ax = plt.subplots(figsize=(9, 3.4))
    bottom = [0] * len(labels)
    for source in sources:
        heights = [counts[label].get(source, 0) for label in labels]
        ax.bar(labels, heights, bottom=bottom, label=source)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_ylabel("training examples")
    # reversed so the legend reads top to bottom like the stack
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left", reverse=True)
    return png_bytes(fig)
