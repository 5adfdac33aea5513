"""How one round trains under each train.method.

sft, masked-thought and distill learn from the round's records directly. cft first asks the
teacher to critique candidate answers (the student's own samples and the reference) and learns
from the critiques. dpo and grpo start, as in their papers, from an SFT model trained on the
round's records: dpo on pairs of the reference against that model's own wrong samples (on-policy),
grpo with the task metric as reward. Each step is a cached stage of the run directory; the
training stages checkpoint outside their stage folder so a killed run resumes mid-training."""

from __future__ import annotations

import contextlib
import random
import sys
import time
from pathlib import Path

from .models import is_adapter, load_model, model_dir, save_merged
from .runs import digest, file_digest, read_jsonl, write_json, write_jsonl
from .synth.records import is_task_answer, record_answer, record_input


def train_round(ctx, round_: int, train_file: Path, given: bool = False) -> Path:
    """Train round `round_` and return the stage folder whose model/ is the round's student.
    `given`: train_file already holds the method's own data (pairs for dpo, critiques for cft)."""
    cfg = ctx.spec.train
    method, start = cfg.method, (ctx.base, ctx.base_id)
    if method in ("dpo", "grpo") and cfg.sft_first and not (given and method == "dpo"):
        sft = train_stage(ctx, f"train-r{round_}", "sft", start, train_file, round_)
        start = full_model(ctx, sft, round_)
    if method == "dpo" and not given:
        return train_stage(ctx, f"dpo-r{round_}", "dpo", start, pairs_stage(ctx, round_, start, train_file), round_)
    if method == "cft" and not given:
        critiques = critique_stage(ctx, round_, train_file)
        return train_stage(ctx, f"train-r{round_}", "cft", start, critiques, round_, sft_file=train_file)
    name = f"{method}-r{round_}" if start[0] != ctx.base else f"train-r{round_}"
    return train_stage(ctx, name, method, start, train_file, round_)


def train_stage(ctx, name: str, method: str, start: tuple[Path, str], data_file: Path, round_: int,
                sft_file: Path | None = None) -> Path:
    """One training run as a stage; a LoRA trained on top of a model other than the base is merged
    into it, so every round's model/ loads with the base alone."""
    from .train import check_rows, train_method
    from .train.adapters import learning_rate
    cfg = ctx.spec.train
    # keyed by the method this stage trains, so the sft stage that dpo and grpo start from is the
    # very stage a plain sft run trains, and is reused between them
    # the learning rate it trains with, not the field: a default that changes must not reuse a stage
    key = {"start": start[1], "data": file_digest(data_file), "method": method,
           "train": fields_read_by(cfg.model_copy(update={"method": method}), method),
           "learning_rate": learning_rate(method_config(ctx, method)),
           "device": ctx.device, "sft": file_digest(sft_file) if sft_file else None}
    checkpoints = ctx.run.root / "checkpoints" / f"{name}-{digest(key)}"

    def build(out: Path) -> None:
        data = read_jsonl(data_file)
        check_rows(data, method, data_file)
        ctx.say(f"round {round_}: {method} on {len(data)} examples ({cfg.adapter}, {ctx.device})")
        begin = time.time()
        with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs; stdout is for results
            log = train_method(method, start[0], data, method_config(ctx, method), out, ctx.device,
                               cfg.seed + round_, checkpoints, reward=task_reward(ctx),
                               sft_records=read_jsonl(sft_file) if sft_file else None)
        if start[0] != ctx.base and is_adapter(out / "model"):
            trained = out / "model"
            save_merged(start[0], trained.rename(out / "adapter"), trained)
        write_json(out / "timing.json", {"seconds": time.time() - begin, "examples": len(data),
                                         "method": log.get("method", method)})

    folder, _ = ctx.run.stage(name, key, build)
    return folder


# train fields that only some methods read; every other field counts for every method
METHOD_FIELDS = {"masked-thought": {"mask_ratio"}, "cft": {"cft_ratio", "cft_candidates"},
                 "dpo": {"sft_first", "rl_learning_rate", "dpo_beta", "dpo_samples"},
                 "grpo": {"sft_first", "rl_learning_rate", "grpo_generations", "grpo_max_completion",
                          "grpo_max_steps", "grpo_beta"},
                 "distill": {"distill_teacher", "distill_loss", "distill_lambda", "distill_beta"}}


def fields_read_by(cfg, method: str) -> dict:
    """The train config as a stage of `method` reads it: a dpo setting changed must not retrain the
    sft stage that dpo starts from (nor the plain sft run that shares it)."""
    others = set().union(*(fields for name, fields in METHOD_FIELDS.items() if name != method))
    return cfg.model_dump(exclude=others - METHOD_FIELDS.get(method, set()))


def method_config(ctx, method: str):
    """The train config of one method's stage: dpo's and grpo's own learning rate, grpo's step
    count, paths resolved against the task directory."""
    cfg = ctx.spec.train
    if any(step.name == "curriculum" for step in ctx.spec.curate.root):
        cfg = cfg.model_copy(update={"data_order": "as-given"})
    if method in ("dpo", "grpo"):
        rate = cfg.rl_learning_rate or (5e-5 if cfg.adapter == "lora" else 1e-6)
        steps = cfg.grpo_max_steps if method == "grpo" else cfg.max_steps
        return cfg.model_copy(update={"learning_rate": rate, "max_steps": steps})
    if method == "distill" and cfg.distill_teacher:
        return cfg.model_copy(update={"distill_teacher": str(model_dir(cfg.distill_teacher, ctx.task.directory))})
    return cfg


def task_reward(ctx):
    from .evaluate.metrics import score
    spec = ctx.spec

    def reward(input_: str, completion: str, reference: str) -> float:
        return score(spec.metric, completion, reference)[0]
    return reward


def full_model(ctx, trained: Path, round_: int) -> tuple[Path, str]:
    """(directory, identity) of a trained stage as a whole model: dpo and grpo start from it."""
    if not is_adapter(trained / "model"):
        return trained / "model", trained.name
    folder, _ = ctx.run.stage(f"merged-r{round_}", {"from": trained.name},
                              lambda out: save_merged(ctx.base, trained / "model", out / "model"))
    return folder / "model", trained.name


def sample_items(ctx, train_file: Path, round_: int) -> list[tuple[str, str]]:
    """(input, reference) of up to synth.mine_size training records: the inputs the student is
    sampled on for dpo pairs and cft candidates."""
    records = [r for r in read_jsonl(train_file) if is_task_answer(r)]  # no critique is itself critiqued
    rng = random.Random(ctx.spec.train.seed + round_)
    chosen = rng.sample(records, min(ctx.spec.synth.mine_size, len(records)))
    return [(record_input(r), record_answer(r)) for r in chosen]


def student_samples(ctx, start: Path, items: list[tuple[str, str]], k: int, round_: int) -> list[list[str]]:
    from .evaluate.task_eval import task_chat
    from .synth.preference_pairs import sample_student
    model, tokenizer = load_model(start, ctx.device)
    chats = [task_chat(ctx.spec.instruction, text) for text, _ in items]
    return sample_student(model, tokenizer, chats, k, temperature=1.0,
                          max_new_tokens=ctx.spec.eval.max_new_tokens, seed=ctx.spec.train.seed + round_)


def pairs_stage(ctx, round_: int, start: tuple[Path, str], train_file: Path) -> Path:
    """On-policy pairs: the reference answer against the starting model's own wrong sample; in round 0
    also the pairs a preference-pairs synthesis step made."""
    from .synth.preference_pairs import preference_pairs
    spec = ctx.spec
    synthesized = ctx.synth_r0 / "pairs.jsonl" if round_ == 0 and ctx.synth_r0 else None
    synthesized = synthesized if synthesized and synthesized.is_file() else None
    key = {"start": start[1], "data": file_digest(train_file), "k": spec.train.dpo_samples,
           "mine": spec.synth.mine_size, "metric": spec.metric.model_dump(), "eval": spec.eval.model_dump(),
           **({"synthesized": file_digest(synthesized)} if synthesized else {})}

    def build(out: Path) -> None:
        items = sample_items(ctx, train_file, round_)
        samples = student_samples(ctx, start[0], items, spec.train.dpo_samples, round_)
        reward = task_reward(ctx)
        pairs = preference_pairs(items, samples, lambda i, a, ref: reward(i, a, ref) >= 1, spec.instruction)
        pairs += read_jsonl(synthesized) if synthesized else []
        ctx.say(f"round {round_}: {len(pairs)} preference pairs from {len(items)} inputs")
        write_jsonl(out / "pairs.jsonl", pairs)

    folder, _ = ctx.run.stage(f"pairs-r{round_}", key, build)
    return folder / "pairs.jsonl"


def critique_stage(ctx, round_: int, train_file: Path) -> Path:
    """The teacher critiques the student's own samples and the reference answers (CFT data)."""
    from .pipeline import _stage_requests, _teacher_stage
    from .synth.critique import critique_candidates
    spec = ctx.spec
    key = {"teacher": ctx.teacher.backend.identity(), "data": file_digest(train_file), "base": ctx.base_id,
           "k": spec.train.cft_candidates, "mine": spec.synth.mine_size, "eval": spec.eval.model_dump()}

    def build(out: Path) -> None:
        items = sample_items(ctx, train_file, round_)
        items = items[:ctx.left // (spec.train.cft_candidates + 1)]
        samples = student_samples(ctx, ctx.base, items, spec.train.cft_candidates, round_)
        # critique_requests skips empty and repeated candidates itself
        candidates = [[*s, ref] for s, (_, ref) in zip(samples, items)]
        result = critique_candidates(ctx.teacher, spec.instruction, items, candidates, round_)
        ctx.say(f"round {round_}: {len(result.records)} critiques ({result.malformed} without a verdict "
                f"and {result.unanswered} unanswered were dropped)")
        write_jsonl(out / "critiques.jsonl", result.records)

    folder = _teacher_stage(ctx, f"critique-r{round_}", key, build)
    ctx.spent += _stage_requests(folder)["requests"]
    return folder / "critiques.jsonl"
