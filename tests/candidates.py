"""Typed results as the loop builds them, with only the numbers a selection test cares about."""

from pathlib import Path

from protege.loop.results import Candidate, Curated, Forgetting, RoundResult, Scored


def scored(accuracy: float, records: str = "r") -> Scored:
    return Scored(accuracy, (0.0, 1.0), 1, Path(records), {})


def forgetting(change: float, over: bool) -> Forgetting:
    return Forgetting(n=1, probe_base=0.5, probe_student=0.5 + change, probe_change=change, probe_change_ci=[0, 0],
                      negative_flips=0, negative_flip_rate=0.0, positive_flips=0, per_category={},
                      perplexity_base=None, perplexity_student=None, perplexity_ratio=None, records=Path("p"),
                      within_limit=not over)


def candidate(dev: float, test: float = 0.5, change: float | None = None, over: bool = False, model: str = "m",
              records: str = "r") -> Candidate:
    lost = forgetting(change or 0.0, over) if change is not None or over else None
    return Candidate(Path(model), scored(test, records), scored(dev), lost)


def round_result(round_: int, **scores) -> RoundResult:
    return RoundResult(round_, candidate(**scores), Path("train_log.json"), Curated(Path("t"), Path("d"), Path("x")),
                       train_examples=0, new_examples=0, teacher_requests=0)
