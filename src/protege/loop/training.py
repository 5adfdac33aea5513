"""How one round trains under each train.method.

sft, masked-thought and distill learn from the round's records directly. cft first asks the
teacher to critique candidate answers (the student's own samples and the reference) and learns
from the critiques. dpo and grpo start, as in their papers, from an SFT model trained on the
round's records: dpo on pairs of the reference against that model's own wrong samples (on-policy),
grpo with the task metric as reward. Each step is a cached stage of the run directory; the
training stages checkpoint outside their stage folder so a killed run resumes mid-training."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import EvalConfig, MetricConfig, TaskSpec, TrainConfig
from ..models import is_adapter, load_model, save_merged
from ..runs import digest, read_jsonl, write_json, write_jsonl
from ..records import record_answer, record_input, sample_task_records
from .stage import StageInputs, stage, teacher_stage
from .state import ModelRef, RunState


def train_round(state: RunState, round_: int, train_file: Path, synthesized_pairs: Path | None = None,
                given: bool = False) -> Path:
    """Train round `round_` and return the stage folder whose model/ is the round's student.
    `given`: train_file already holds the method's own data (pairs for dpo, critiques for cft);
    synthesized_pairs: preference pairs a synthesis method made, which a pairs method learns from too.
    What runs first is what the method's options declare (train.MethodOptions), not its name."""
    options = state.spec.train.method
    method, start = options.name, state.base
    if options.starts_from_sft() and not (given and options.data_stage == "pairs"):
        sft = train_stage(state, f"train-r{round_}", "sft", start, train_file, round_)
        start = full_model(state, sft, round_)
    if given or options.data_stage == "records":
        name = f"{method}-r{round_}" if start != state.base else f"train-r{round_}"
        return train_stage(state, name, method, start, train_file, round_)
    if options.data_stage == "pairs":
        pairs = pairs_stage(state, round_, start, train_file, synthesized_pairs)
        return train_stage(state, f"{method}-r{round_}", method, start, pairs, round_)
    critiques = critique_stage(state, round_, train_file)
    return train_stage(state, f"train-r{round_}", method, start, critiques, round_, sft_file=train_file)


@dataclass(frozen=True)
class TrainInputs(StageInputs):
    start: str  # the identity of the model training starts from
    data: Path
    method: str
    # the shared train fields and this method's own options only: a dpo setting changed must not retrain
    # the sft stage that dpo starts from (nor the plain sft run that shares it)
    train: TrainConfig
    learning_rate: float  # the rate it trains with, not the field: a changed default must retrain
    device: str
    sft: Path | None  # cft: the plain records mixed with the critiques


def train_stage(state: RunState, name: str, method: str, start: ModelRef, data_file: Path, round_: int,
                sft_file: Path | None = None) -> Path:
    """One training run as a stage; a LoRA trained on top of a model other than the base is merged
    into it, so every round's model/ loads with the base alone."""
    from ..train.adapters import learning_rate
    cfg = method_config(state.spec, method, state.task.directory)
    inputs = TrainInputs(start.identity, data_file, method, cfg, learning_rate(cfg), state.device, sft_file)
    checkpoints = state.run.root / "checkpoints" / f"{name}-{digest(inputs.key())}"
    return stage(state, name, inputs, lambda out: write_trained(out, state, inputs, start, round_, checkpoints))


def write_trained(out: Path, state: RunState, inputs: TrainInputs, start: ModelRef, round_: int,
                  checkpoints: Path) -> None:
    from ..train import check_rows, fitting_rows, train_method
    data = read_jsonl(inputs.data)
    check_rows(data, inputs.method, inputs.data)
    data = fitting_rows(data, inputs.train.max_length, state.say)
    state.say(f"round {round_}: {inputs.method} on {len(data)} examples ({inputs.train.adapter.name}, "
              f"{state.device})")
    begin = time.time()
    start_dir = start.path or state.base_dir
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs; stdout is for results
        log = train_method(inputs.method, start_dir, data, inputs.train, out, inputs.device,
                           inputs.train.seed + round_, checkpoints, reward=task_reward(state.spec.metric),
                           sft_records=fitting_rows(read_jsonl(inputs.sft), inputs.train.max_length, state.say)
                           if inputs.sft else None)
    if start.path is not None and is_adapter(out / "model"):
        trained = out / "model"
        save_merged(start_dir, trained.rename(out / "adapter"), trained)
    write_json(out / "timing.json", {"seconds": time.time() - begin, "examples": len(data),
                                     "method": log.get("method", inputs.method)})


def method_config(spec: TaskSpec, method: str, task_dir: Path) -> TrainConfig:
    """The train config one method's stage trains with: the shared train fields and that method's own
    options only (train.method's when it names the method, else its defaults), as the method's options
    adjust it (their own learning rate, step count, resolved paths), in the curriculum's order when the
    curation ends with one."""
    from ..train import method_options
    options = method_options(spec.train, method)
    cfg = spec.train.model_copy(update={"method": options})
    if any(step.name == "curriculum" for step in spec.curate.root):
        cfg = cfg.model_copy(update={"data_order": "as-given"})
    return options.stage_config(cfg, task_dir)


def task_reward(metric: MetricConfig) -> Callable[[str, str, str], float]:
    """reward(input, completion, reference): the task's metric scores the completion."""
    from ..evaluate.metrics import score

    def reward(input_: str, completion: str, reference: str) -> float:
        return score(metric, completion, reference)[0]
    return reward


def full_model(state: RunState, trained: Path, round_: int) -> ModelRef:
    """A trained stage as a whole model: dpo and grpo start from it."""
    if not is_adapter(trained / "model"):
        return ModelRef(trained / "model", trained.name)
    return ModelRef(merged_model(state, f"merged-r{round_}", ModelRef(trained / "model", trained.name)),
                    trained.name)


@dataclass(frozen=True)
class MergedInputs(StageInputs):
    base: str
    adapter: str  # the identity of the LoRA adapter merged into the base


def merged_model(state: RunState, name: str, adapter: ModelRef) -> Path:
    """A LoRA adapter merged into the base student, as a whole model directory (a cached stage)."""
    inputs = MergedInputs(state.base.identity, adapter.identity)
    folder = stage(state, name, inputs, lambda out: save_merged(state.base_dir, adapter.path, out / "model"))
    return folder / "model"


def sampled_items(train_file: Path, count: int, seed: int) -> list[tuple[str, str]]:
    """(input, reference) of up to `count` training records: the inputs the student is sampled on for
    dpo pairs and cft candidates (a critique is never itself critiqued)."""
    return [(record_input(r), record_answer(r)) for r in sample_task_records(read_jsonl(train_file), count, seed)]


def student_samples(state: RunState, start: Path, items: list[tuple[str, str]], k: int, seed: int) -> list[list[str]]:
    from ..models.generate import sample_answers
    model, tokenizer = load_model(start, state.device)
    return sample_answers(model, tokenizer, state.spec.instruction, items, k, 1.0, state.spec.eval.max_new_tokens,
                          seed)


@dataclass(frozen=True)
class PairsInputs(StageInputs):
    start: str
    data: Path
    k: int
    mine: int
    metric: MetricConfig
    eval: EvalConfig
    seed: int  # of the sampler that picks the inputs and of the student's samples
    instruction: str
    synthesized: Path | None  # round 0: the pairs a preference-pairs synthesis step made


def pairs_stage(state: RunState, round_: int, start: ModelRef, train_file: Path, synthesized: Path | None) -> Path:
    """On-policy pairs: the reference answer against the starting model's own wrong sample; in round 0
    also the pairs a preference-pairs synthesis step made."""
    spec = state.spec
    inputs = PairsInputs(start.identity, train_file, spec.train.method.samples, spec.synth.mine_size, spec.metric,
                         spec.eval, spec.train.seed + round_, spec.instruction, synthesized if round_ == 0 else None)

    def build(out: Path) -> None:
        from ..synth.preference_pairs import preference_pairs
        items = sampled_items(inputs.data, inputs.mine, inputs.seed)
        samples = student_samples(state, start.path or state.base_dir, items, inputs.k, inputs.seed)
        reward = task_reward(inputs.metric)
        pairs = preference_pairs(items, samples, lambda i, a, ref: reward(i, a, ref) >= 1, inputs.instruction)
        pairs += read_jsonl(inputs.synthesized) if inputs.synthesized else []
        state.say(f"round {round_}: {len(pairs)} preference pairs from {len(items)} inputs")
        write_jsonl(out / "pairs.jsonl", pairs)

    return stage(state, f"pairs-r{round_}", inputs, build) / "pairs.jsonl"


@dataclass(frozen=True)
class CritiqueInputs(StageInputs):
    teacher: str
    data: Path
    base: str
    k: int
    mine: int
    limit: int  # inputs the request budget affords, k + 1 critiques each
    eval: EvalConfig
    seed: int
    instruction: str
    round: int  # the round number each critique record carries


def critique_stage(state: RunState, round_: int, train_file: Path) -> Path:
    """The teacher critiques the student's own samples and the reference answers (CFT data)."""
    spec = state.spec
    k = spec.train.method.candidates
    inputs = CritiqueInputs(state.teacher.backend.identity(), train_file, state.base.identity, k,
                            spec.synth.mine_size, state.budget.left // (k + 1), spec.eval, spec.train.seed + round_,
                            spec.instruction, round_)

    def build(out: Path) -> None:
        from ..synth.critique import critique_candidates
        items = sampled_items(inputs.data, inputs.mine, inputs.seed)[:inputs.limit]
        samples = student_samples(state, state.base_dir, items, inputs.k, inputs.seed)
        # critique_requests skips empty and repeated candidates itself
        candidates = [[*s, ref] for s, (_, ref) in zip(samples, items)]
        result = critique_candidates(state.teacher, inputs.instruction, items, candidates, inputs.round)
        state.say(f"round {round_}: {len(result.records)} critiques ({result.malformed} without a verdict "
                  f"and {result.unanswered} unanswered were dropped)")
        write_jsonl(out / "critiques.jsonl", result.records)

    return teacher_stage(state, f"critique-r{round_}", inputs, build, count_requests=True) / "critiques.jsonl"
