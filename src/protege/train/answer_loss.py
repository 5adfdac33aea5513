"""The SFT loss computed only where there are answer tokens.

A causal LM predicts the token at t+1 from position t, so the vocabulary projection is needed only
at the positions whose next label is an answer token. The model is asked for exactly those
(transformers' `logits_to_keep` takes the positions), which goes through the model's own forward,
so peft, DDP and FSDP see an ordinary call. TRL's fused LM head does the same in vocabulary tiles
to never hold the logits; on a CPU its tile loop costs more than the logits it saves (the answer
positions of a batch are a few hundred), so protege holds them: answer tokens x vocabulary."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from trl import SFTTrainer


def answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, positions, targets): every position whose next token is a label, and that label."""
    following = labels[:, 1:]
    rows, positions = (following != -100).nonzero(as_tuple=True)
    return rows, positions, following[rows, positions]


def answer_logits(model, inputs: dict, labels: torch.Tensor):
    """(outputs, logits, targets): the model run on `inputs` with the vocabulary projected only at
    the answer positions; logits has one row per target."""
    rows, positions, targets = answer_positions(labels)
    kept = positions.unique()  # sorted; one set of positions for every row of a padded batch
    outputs = model(**inputs, use_cache=False, logits_to_keep=kept)
    logits = outputs.logits
    if logits.shape[0] == 1:
        # one (padding-free) row: its positions are already unique and sorted, so kept == positions
        # (gathering would copy the logits, and its backward scatter into a zeroed copy)
        return outputs, logits[0], targets
    return outputs, logits[rows, torch.searchsorted(kept, positions)], targets


def answer_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary in float32 whatever the logits' dtype; the loss and the
    logged statistics both read it, so it is computed once a step."""
    return torch.log_softmax(logits.float(), dim=-1)


def answer_token_loss(log_probs: torch.Tensor, targets: torch.Tensor, num_items: int | torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the answer tokens (log_probs: one row per target) over num_items, the
    answer tokens of the whole optimizer step, as transformers scales a loss under gradient
    accumulation."""
    total = F.nll_loss(log_probs, targets, reduction="sum")
    return total / torch.as_tensor(num_items, device=total.device).clamp(min=1)


@torch.no_grad()
def answer_token_stats(log_probs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """What TRL's SFT logs: the share of answer tokens the model ranks first, and the mean entropy of
    its next-token distribution there."""
    if targets.numel() == 0:
        return {"mean_token_accuracy": 0.0, "entropy": 0.0}
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return {"mean_token_accuracy": (log_probs.argmax(-1) == targets).float().mean().item(),
            "entropy": entropy.mean().item()}


class AnswerLossSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer with a loss that asks the model for logits only at the answer positions.

    Those logits are held whole (answer tokens x vocabulary, in float32 for the log-softmax). Past
    `logits_budget_bytes` (a large GPU batch: 16k answer tokens of a 150k vocabulary are 9.8 GB) the
    step goes to TRL's own loss, whose fused LM head works through the vocabulary in tiles and never
    holds them; on a CPU its tile loop is the slower way for the few hundred answers of a batch."""

    logits_budget_bytes = 2 ** 30

    def answer_logit_bytes(self, labels) -> int:
        vocabulary = self.model.get_output_embeddings().weight.shape[0]
        return int((labels[:, 1:] != -100).sum()) * vocabulary * 4

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.answer_logit_bytes(inputs["labels"]) > self.logits_budget_bytes:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        model_inputs = {key: value for key, value in inputs.items() if key != "labels"}
        outputs, logits, targets = answer_logits(model, model_inputs, inputs["labels"])
        log_probs = answer_log_probs(logits)
        count = len(targets) if num_items_in_batch is None else num_items_in_batch
        loss = answer_token_loss(log_probs, targets, count)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # num_items counts every rank; DDP averages
        mode = "train" if model.training else "eval"
        for key, value in answer_token_stats(log_probs, targets).items():
            self._metrics[mode][key].append(value)
        return (loss, outputs) if return_outputs else loss
