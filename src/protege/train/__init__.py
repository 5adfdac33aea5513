"""Training methods, one file each (TRL-style: a trainer file reads top to bottom). Each file declares
its options (a MethodOptions, under `train.method`) and registers its entry function with
`@TRAIN.register(Options)` (protege.registry); `train_method` only looks the method up. Adapters (what
part of the student trains) register the same way with ADAPTER (adapters.py). Each method takes the
data it learns from: chat records (sft, masked-thought, cft, distill, grpo) or preference pairs (dpo)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Literal

from pydantic import Field

from ..config import Strict, TrainConfig
from ..registry import TRAIN


class MethodOptions(Strict):
    """What the loop reads of every training method's options, besides the method's own fields: what
    data the method learns from, whether it starts from an SFT model, and the train config of its
    stage. The loop asks these, never the method's name, so a new method is one file."""

    learns_from: ClassVar[str] = "a chat record {messages}"
    row_keys: ClassVar[tuple[str, ...]] = ("messages",)
    # what a round makes for the method to learn from: the round's chat records as they are, preference
    # pairs of the reference against the start model's own wrong samples (the options then have
    # `samples`), or the teacher's critiques of candidate answers (the options then have `candidates`)
    data_stage: ClassVar[Literal["records", "pairs", "critiques"]] = "records"
    # whether it learns from agent episodes (records with tools, every assistant turn in the loss)
    trains_on_episodes: ClassVar[bool] = False
    # flat keys of the earlier train config -> this method's option (read with a note on stderr)
    legacy: ClassVar[dict[str, str]] = {}

    def starts_from_sft(self) -> bool:
        """Whether a round first trains sft on its records and starts from that model."""
        return False

    def stage_config(self, cfg: TrainConfig, task_dir: Path) -> TrainConfig:
        """The train config this method's stage trains with (cfg.method is these options)."""
        return cfg


class StartsFromSFT(MethodOptions):
    """dpo and grpo: as in their papers, the round first trains sft and starts from that model."""

    legacy: ClassVar[dict[str, str]] = {"sft_first": "sft_first", "rl_learning_rate": "learning_rate"}
    sft_first: bool = Field(True, description="Train sft on the round's data first and start from that model.")
    learning_rate: float | None = Field(None, gt=0, description="Peak learning rate; empty: 5e-5 for lora, 1e-6 "
                                        "for hft and full (preference and RL updates move far at SFT rates).")

    def starts_from_sft(self) -> bool:
        return self.sft_first

    def stage_config(self, cfg: TrainConfig, task_dir: Path) -> TrainConfig:
        """Its own learning rate instead of the SFT one."""
        rate = self.learning_rate or (5e-5 if cfg.adapter.name == "lora" else 1e-6)
        return cfg.model_copy(update={"learning_rate": rate})


@dataclass
class TrainJob:
    """What a training method's entry function is given."""

    model_path: Path
    data: list[dict]
    cfg: TrainConfig
    output_dir: Path
    device: str = "cpu"
    stage_seed: int = 0
    checkpoints: Path | None = None
    reward: Callable[[str, str, str], float] | None = None  # grpo: reward(input, completion, reference)
    sft_records: list[dict] | None = None  # cft: the plain records mixed with the critiques


def method_options(cfg: TrainConfig, name: str) -> MethodOptions:
    """The options method `name` trains with: train.method's when it names that method, else the
    method's defaults (the sft stage a dpo round starts from)."""
    return cfg.method if cfg.method.name == name else TRAIN.make(name)


def check_rows(rows: list[dict], method: str, source: Path) -> None:
    """Fail on the first row that is not what `method` learns from, naming the file and line,
    before any model loads."""
    options = TRAIN.options(method)
    for line, row in enumerate(rows, 1):
        missing = [key for key in options.row_keys if not isinstance(row, dict) or key not in row]
        if missing:
            raise ValueError(f"{source}:{line}: {method} trains on {options.learns_from}; this row has no "
                             f"{', '.join(missing)}")


# characters a token: no tokenizer's tokens of real text come near it, so a row longer than this many times
# train.max_length is far past what training reads of it, and tokenizing it whole (a 50 MB line) is what
# would exhaust the memory
CHARS_PER_TOKEN_BOUND = 64


def fitting_rows(rows: list[dict], max_length: int, say: Callable[[str], None]) -> list[dict]:
    """The rows short enough to tokenize; the others are left out with a count, all of them an error."""
    limit = CHARS_PER_TOKEN_BOUND * max_length
    kept = [row for row in rows if len(json.dumps(row, ensure_ascii=False)) <= limit]
    if not kept:
        raise ValueError(f"no training data: every example is over {limit} characters "
                         f"({CHARS_PER_TOKEN_BOUND} a token of train.max_length {max_length})")
    if len(kept) < len(rows):
        say(f"train: {len(rows) - len(kept)} of {len(rows)} examples left out, each over {limit} characters "
            f"({CHARS_PER_TOKEN_BOUND} a token of train.max_length {max_length})")
    return kept


def train_method(method: str, model_path: Path, data: list[dict], cfg: TrainConfig, output_dir: Path,
                 device: str = "cpu", stage_seed: int = 0, checkpoints: Path | None = None,
                 reward: Callable[[str, str, str], float] | None = None,
                 sft_records: list[dict] | None = None) -> dict:
    """Train `model_path` with `method` and save into output_dir/model; returns the training log.
    cft learns from critique records mixed with sft_records; grpo needs reward(input, completion,
    reference)."""
    job = TrainJob(model_path, data, cfg, output_dir, device, stage_seed, checkpoints, reward, sft_records)
    return TRAIN.get(method)(job)
