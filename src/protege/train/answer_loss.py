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
