"""Proxy-tuning (Liu et al. 2024, "Tuning Language Models by Proxy") and emulated fine-tuning (Mitchell
et al. 2023): a large base model BIG decodes as if it had been fine-tuned the way a small EXPERT was tuned
from its base ANTI, by adding the small pair's difference to BIG's next-token scores at every step:

    scores = log_softmax(big) + alpha * (log_softmax(expert) - log_softmax(anti))

The proxy-tuning paper writes this over logit scores and its code adds raw logits; emulated fine-tuning writes
it over log-probabilities. Both give the same next-token distribution: log_softmax shifts a row by one
constant, which softmax, temperature, top-k, top-p and argmax all ignore. Log-probabilities are used here
because the combined score is then the log of the emulated model's unnormalised probability, whatever offset
each model's raw logits carry.

ProxyModel stands where a transformers model stands for the server's batcher (batching.generate_batch):
`generate` on a left-padded batch, `generation_config`, `device`, `config`. It keeps one KV cache per model
and decodes the three in lock step, so the models may differ in size but must share one vocabulary."""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


class VocabularyMismatch(ValueError):
    """The models number their tokens differently, so their scores cannot be added token by token."""


def proxy_scores(big: torch.Tensor, expert: torch.Tensor, anti: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Next-token scores of the proxy-tuned model from the three models' logits (each [..., vocab])."""
    big_lp, expert_lp, anti_lp = (torch.log_softmax(x.float(), dim=-1) for x in (big, expert, anti))
    return big_lp + alpha * (expert_lp - anti_lp)


def sampling_warpers(temperature: float | None, top_k: int | None, top_p: float | None) -> LogitsProcessorList:
    """transformers' own warpers, in the order its generate applies them."""
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature or 1.0)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def pick_next(scores: torch.Tensor, warpers: LogitsProcessorList | None) -> torch.Tensor:
    """One token per row: the argmax without warpers (greedy), else a draw from the warped distribution."""
    if warpers is None:
        return scores.argmax(dim=-1)
    return torch.multinomial(torch.softmax(warpers(None, scores), dim=-1), 1).squeeze(-1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token, as transformers' generate counts them, so that
    left padding does not shift a prompt's positions."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


def id_list(ids: int | list[int] | None) -> list[int]:
    return list(ids) if isinstance(ids, (list, tuple)) else [] if ids is None else [ids]


def smallest_context(models) -> int | None:
    """Every model sees the whole sequence, so the shortest context bounds the proxy's."""
    contexts = [getattr(m.config, "max_position_embeddings", None) for m in models]
    return min((c for c in contexts if c), default=None)


class ProxyModel:
    """BIG steered by (EXPERT - ANTI), usable wherever the batcher expects a transformers model."""

    def __init__(self, big, expert, anti, alpha: float = 1.0):
        self.models, self.alpha = (big, expert, anti), alpha
        self.generation_config = big.generation_config
        # the server reads the context limit from here; it must be the shortest of the three
        self.config = copy.copy(big.config)
        self.config.max_position_embeddings = smallest_context(self.models)
        self._keep = [{"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(m.forward).parameters
                      else {} for m in self.models]

    @property
    def device(self) -> torch.device:
        return self.models[0].device

    def step(self, input_ids, attention_mask, positions, caches):
        """Proxy scores for the next token, and each model's cache grown by `input_ids`."""
        outputs = [model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                         past_key_values=cache, use_cache=True, **keep)
                   for model, cache, keep in zip(self.models, caches, self._keep)]
        scores = proxy_scores(*(out.logits[:, -1] for out in outputs), alpha=self.alpha)
        return scores, [out.past_key_values for out in outputs]

    def warpers(self, do_sample: bool, temperature, top_k, top_p) -> LogitsProcessorList | None:
        """None for greedy; settings not passed fall back to BIG's generation_config, as in transformers."""
        config = self.generation_config
        if not do_sample or temperature == 0:
            return None
        return sampling_warpers(temperature if temperature is not None else config.temperature,
                                top_k if top_k is not None else config.top_k,
                                top_p if top_p is not None else config.top_p)

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 32, pad_token_id: int | None = None,
                 eos_token_id: int | list[int] | None = None, do_sample: bool = False,
                 temperature: float | None = None, top_p: float | None = None,
                 top_k: int | None = None) -> torch.Tensor:
        """Prompt and reply tokens, [rows, prompt + reply], as transformers' generate returns them: a row
        that has ended is filled with `pad_token_id`, and decoding stops once every row has ended."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        stops = torch.tensor(id_list(eos_token_id if eos_token_id is not None
                                     else self.generation_config.eos_token_id), dtype=torch.long,
                             device=input_ids.device)
        pad = pad_token_id if pad_token_id is not None else self.generation_config.pad_token_id
        warpers = self.warpers(do_sample, temperature, top_k, top_p)
        tokens, step_ids, positions, caches = input_ids, input_ids, position_ids(mask), [None] * 3
        running = torch.ones(len(input_ids), dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            scores, caches = self.step(step_ids, mask, positions, caches)
            chosen = torch.where(running, pick_next(scores, warpers), pad if pad is not None else 0)
            tokens = torch.cat([tokens, chosen[:, None]], dim=1)
            running &= ~torch.isin(chosen, stops)
            if not running.any():
                break
            step_ids, positions = chosen[:, None], positions[:, -1:] + 1
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
        return tokens


def output_size(model) -> int:
    """How many scores the model gives per step (a vocabulary may be padded beyond the tokenizer's)."""
    return model.get_output_embeddings().weight.shape[0]


def check_shared_vocabulary(loaded: dict[str, tuple]) -> None:
    """`loaded` maps a description of each model to its (model, tokenizer); raises VocabularyMismatch
    naming the first that numbers tokens differently from the first model."""
    (first, (first_model, first_tokenizer)), *rest = loaded.items()
    for name, (model, tokenizer) in rest:
        if tokenizer.get_vocab() != first_tokenizer.get_vocab():
            raise VocabularyMismatch(
                f"proxy-tuning needs one vocabulary: the tokenizer of {name} ({len(tokenizer)} tokens) "
                f"differs from that of {first} ({len(first_tokenizer)} tokens)")
        if output_size(model) != output_size(first_model):
            raise VocabularyMismatch(
                f"proxy-tuning needs one vocabulary: {name} scores {output_size(model)} tokens, "
                f"{first} scores {output_size(first_model)}")


def load_proxy(big: Path, expert: Path, anti: Path, device: str = "cpu", alpha: float = 1.0):
    """(ProxyModel, tokenizer). `expert` is a model directory, or a LoRA adapter trained on `anti`."""
    from ..models import is_adapter, load_model

    big, expert, anti = Path(big), Path(expert), Path(anti)
    loaded = {f"the base model {big}": load_model(big, device),
              f"the expert {expert}": (load_model(anti, device, adapter=expert) if is_adapter(expert)
                                       else load_model(expert, device)),
              f"the anti-expert {anti}": load_model(anti, device)}
    check_shared_vocabulary(loaded)
    models = [model for model, _ in loaded.values()]
    return ProxyModel(*models, alpha=alpha), loaded[f"the base model {big}"][1]


@dataclass(frozen=True)
class ProxySpec:
    """What `protege serve --proxy-base BIG --proxy-expert TUNED --proxy-anti BASE` serves."""
    big: Path
    expert: Path
    anti: Path
    alpha: float = 1.0

    @property
    def name(self) -> str:
        return f"{Path(self.big).name}+{Path(self.expert).name}"

    def load(self, device: str = "cpu"):
        return load_proxy(self.big, self.expert, self.anti, device, self.alpha)
