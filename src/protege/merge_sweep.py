"""The sweep that can end a run: the kept student merged back toward its base at several strengths
(base + s * (student - base), by the merge method the task names), each merge evaluated like a round
(test, dev, forgetting), and the best on dev inside the forgetting limit kept. Fine-tuning's gain on
the task and its loss of general ability do not fall at the same rate as s falls (WiSE-FT, LiNeS), so
a merge often keeps most of the task and gets back under the limit."""

from __future__ import annotations

from pathlib import Path

from .merge.streaming import merge_dirs


def merge_stage(ctx, student: dict, strength: float) -> Path:
    """The student merged at one strength, as a cached stage holding a full model directory."""
    cfg = ctx.spec.merge
    model = Path(student["model"])
    key = {"base": ctx.base_id, "student": model.parent.name, "method": cfg.method, "params": cfg.params,
           "strength": strength}

    def build(out: Path) -> None:
        merge_dirs(ctx.base, [model], cfg.method, dict(cfg.params), out / "model", weights=[strength])

    folder, _ = ctx.run.stage(f"merge-{strength:g}", key, build)
    return folder / "model"


def keep_best(candidates: list[dict], closer_to_base) -> dict:
    """Best dev inside the forgetting limit (on a tie, the one closer_to_base ranks higher); when
    every candidate is over the limit, the one that forgot least."""
    inside = [c for c in candidates if not c.get("over_forgetting_limit")]
    if not inside:
        return max(candidates, key=lambda c: (c["forgetting"]["probe_change"], closer_to_base(c)))
    return max(inside, key=lambda c: (c["dev_accuracy"], closer_to_base(c)))


def sweep_line(point: dict) -> str:
    lost = point["forgetting"]
    forgetting = f" | probe {lost['probe_change']:+.1%}" if lost else ""
    over = " (over the forgetting limit)" if point["over_forgetting_limit"] else ""
    return (f"merge at {point['strength']:g}: test {point['test_accuracy']:.1%} | "
            f"dev {point['dev_accuracy']:.1%}{forgetting}{over}")


def merge_sweep(ctx, student: dict) -> dict | None:
    """Every strength of the task's sweep, with the student itself as strength 1; None without a sweep."""
    from .pipeline import evaluate_candidate
    cfg = ctx.spec.merge
    if not cfg.strengths:
        return None
    points = [{"strength": 1.0, **{k: student[k] for k in POINT_KEYS}}]
    for strength in cfg.strengths:
        merged = merge_stage(ctx, student, strength)
        point = {"strength": strength,
                 **evaluate_candidate(ctx, f"merge-{strength:g}", merged, merged.parent.name, ctx.dev_items or [])}
        ctx.say(sweep_line(point))
        points.append(point)
    chosen = keep_best(points, closer_to_base=lambda p: -p["strength"])
    return {"method": cfg.method, "params": cfg.params, "round": student["round"], "points": points,
            "chosen": chosen["strength"]}


POINT_KEYS = ("model", "test_accuracy", "test_ci", "dev_accuracy", "test_records", "dev_records", "forgetting",
              "over_forgetting_limit")
