"""The evaluation stages of a run: task score on test and dev, the teacher's score, forgetting of
general ability, and the judge. Each is a cached stage of the run directory, keyed by what it read."""

from __future__ import annotations

from pathlib import Path

from .config import Example
from .runs import file_digest, read_json, read_jsonl, write_json, write_jsonl


def _write_scored(out: Path, records: list[dict], summary: dict) -> None:
    write_jsonl(out / "records.jsonl", records)
    write_json(out / "summary.json", summary)


def _scored(folder: Path) -> dict:
    """A scoring stage's summary, with where its per-item records are."""
    return {**read_json(folder / "summary.json"), "records": str(folder / "records.jsonl")}


def eval_stage(ctx, name: str, adapter: Path | None, items: list[Example], key_extra) -> dict:
    """Evaluate the base (adapter None) or a trained student on items; returns the summary."""
    from .evaluate.task_eval import evaluate_model
    from .pipeline import loaded_student
    spec = ctx.spec
    key = {"model": key_extra, "items": [i.model_dump() for i in items], "metric": spec.metric.model_dump(),
           "eval": spec.eval.model_dump(), "instruction": spec.instruction}

    def build(out: Path) -> None:
        model, tokenizer = loaded_student(ctx, adapter)
        _write_scored(out, *evaluate_model(model, tokenizer, items, spec.instruction, spec.metric, spec.eval,
                                           desc=name))

    folder, _ = ctx.run.stage(name, key, build)
    return _scored(folder)


def eval_teacher(ctx) -> dict:
    """The teacher answers the test set too, so its score sits beside the student's. These
    requests are reported, not charged to the synthesis budget."""
    from .evaluate.task_eval import score_predictions
    from .pipeline import _teacher_stage
    from .teachers import TeacherRequest
    spec = ctx.spec
    key = {"teacher": ctx.teacher.backend.identity(), "test": [t.model_dump() for t in ctx.task.test],
           "metric": spec.metric.model_dump(), "instruction": spec.instruction}

    def build(out: Path) -> None:
        requests = [TeacherRequest("answer", spec.instruction, input=t.input) for t in ctx.task.test]
        replies = ctx.teacher.complete(requests)
        _write_scored(out, *score_predictions(ctx.task.test, [r or "" for r in replies], spec.metric, spec.eval))

    return _scored(_teacher_stage(ctx, "eval-teacher", key, build))


def probe_stage(ctx, name: str, adapter: Path | None, key_extra) -> dict:
    """The general-ability probe and the perplexity of general text, for one model."""
    from .evaluate import forgetting
    from .pipeline import loaded_student
    cfg = ctx.spec.forgetting
    items = forgetting.load_probe(cfg.categories, cfg.probe_items, ctx.spec.train.seed)
    key = {"model": key_extra, "items": items, "perplexity": cfg.perplexity, "max_new_tokens": cfg.max_new_tokens,
           "text": file_digest(forgetting.GENERAL_TEXT) if cfg.perplexity else None}

    def build(out: Path) -> None:
        model, tokenizer = loaded_student(ctx, adapter)
        records = forgetting.run_probe(model, tokenizer, items, ctx.spec.eval.batch_size, cfg.max_new_tokens)
        perplexity = forgetting.general_perplexity(model, tokenizer) if cfg.perplexity else None
        _write_scored(out, records, {"probe_accuracy": sum(r["correct"] for r in records) / len(records),
                                     "perplexity": perplexity, "items": len(records)})

    folder, _ = ctx.run.stage(name, key, build)
    return _scored(folder)


def forgetting_of(ctx, base_probe: dict, student_probe: dict) -> dict:
    """What the student lost against its base: probe change with its interval, negative flips,
    perplexity ratio; and whether that is inside the task's limit."""
    from .evaluate import forgetting
    result = forgetting.compare(read_jsonl(Path(base_probe["records"])), read_jsonl(Path(student_probe["records"])),
                                base_probe["perplexity"], student_probe["perplexity"], ctx.spec.eval.confidence,
                                ctx.spec.eval.bootstrap, ctx.spec.train.seed)
    result["records"] = student_probe["records"]
    result["within_limit"] = forgetting.within_limit(result, ctx.spec.forgetting.limit)
    return result


def versus(ctx, a: dict, b: dict) -> dict:
    """Paired bootstrap of two models' per-item test scores: is the difference real?"""
    from .evaluate.bootstrap import paired_difference
    scores_a = [r["score"] for r in read_jsonl(Path(a["records"]))]
    scores_b = [r["score"] for r in read_jsonl(Path(b["records"]))]
    return paired_difference(scores_a, scores_b, ctx.spec.eval.confidence, ctx.spec.eval.bootstrap,
                             ctx.spec.train.seed)


def judge_teacher(ctx):
    """The judge is the task's teacher unless the task names another."""
    from .teachers import CachedTeacher, TeacherCache, build_teacher
    cfg = ctx.spec.judge.teacher
    if cfg is None:
        return ctx.teacher
    return CachedTeacher(build_teacher(cfg, ctx.task.directory), TeacherCache(), {"max_tokens": cfg.max_tokens})


def judge_stage(ctx, answers: dict[str, dict]) -> dict | None:
    """LLM-as-judge over the test set: pointwise scores for each model in `answers` (name -> eval
    summary with its records), pairwise student against teacher in both orders."""
    from .evaluate import judge
    from .pipeline import _teacher_stage
    cfg = ctx.spec.judge
    if cfg.mode == "none":
        return None
    teacher = judge_teacher(ctx)
    n = cfg.items or len(ctx.task.test)
    items = ctx.task.test[:n]
    predictions = {name: [r["prediction"] or "" for r in read_jsonl(Path(s["records"]))][:n]
                   for name, s in answers.items()}
    key = {"judge": teacher.backend.identity(), "cfg": cfg.model_dump(exclude={"teacher"}),
           "items": [i.model_dump() for i in items], "answers": predictions, "instruction": ctx.spec.instruction}

    interval = {"confidence": ctx.spec.eval.confidence, "resamples": ctx.spec.eval.bootstrap,
                "seed": ctx.spec.train.seed}

    def build(out: Path) -> None:
        result = {}
        if cfg.mode in ("pointwise", "both"):
            result["pointwise"] = {}
            for name, answers_ in predictions.items():
                records, summary = judge.judge_pointwise(teacher, ctx.spec.instruction, items, answers_, cfg.rubric,
                                                         **interval)
                write_jsonl(out / f"pointwise-{name}.jsonl", records)
                result["pointwise"][name] = summary
        if cfg.mode in ("pairwise", "both"):
            records, summary = judge.judge_pairwise(teacher, ctx.spec.instruction, items, predictions["student"],
                                                    predictions["teacher"], cfg.rubric, ("student", "teacher"),
                                                    **interval)
            write_jsonl(out / "pairwise.jsonl", records)
            result["pairwise"] = summary
        write_json(out / "judge.json", result)

    folder = _teacher_stage(ctx, "judge", key, build, teacher)
    return {**read_json(folder / "judge.json"), "folder": str(folder)}
