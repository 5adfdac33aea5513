"""One copy of the prefix every example of a batch shares (an agent task's system message with its
tools, often more than half of each example), computed once per batch.

The padding-free row holds the first example whole, then each other example from where the shared
prefix ends, its position ids going on from the prefix's length; packed_attention sees the layout in
the position ids and lets each example attend to the prefix and to itself. The prefix carries no
label, and the first token after it none either (it is predicted from the prefix's last token, which
only the first example's suffix follows in the row), so every label is predicted from the same
context as without sharing, and the loss and the gradients are the same numbers."""

from __future__ import annotations

MIN_SHARED = 16  # tokens: below this the saving does not pay for the per-example attention calls


def first_label(labels: list[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != -100), len(labels))


def common_length(rows: list[list[int]]) -> int:
    shortest = min(len(row) for row in rows)
    return next((i for i in range(shortest) if len({row[i] for row in rows}) > 1), shortest)


def shared_length(examples: list[dict]) -> int:
    """Tokens all examples begin with, ending before any example's first label (so the first token
    after the prefix is never a label); 0 when there is too little to share."""
    shared = min(common_length([e["input_ids"] for e in examples]),
                 min(first_label(e["labels"]) for e in examples) - 1)
    return shared if shared >= MIN_SHARED and len(examples) > 1 else 0


class SharedPrefixCollator:
    """Wraps TRL's padding-free collator: the batch it builds from the examples cut past their
    shared prefix (all but the first), with position ids that go on from the prefix; examples that do
    not share it come last, whole (a new example always starts at position 0 after a cut one)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict]) -> dict:
        group, rest = sharing_group(examples)
        shared = shared_length(group)
        if not shared:
            return self.collator(examples)
        rows = [group[0], *({key: e[key][shared:] for key in ("input_ids", "labels")} for e in group[1:]), *rest]
        return with_shared_positions(self.collator(rows), [len(r["input_ids"]) for r in rows], shared, len(group))


def sharing_group(examples: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the largest set of examples that begin alike, the others): a batch that mixes an agent's
    episodes with general examples (a mixture) still shares the episodes' system message."""
    starts = [tuple(e["input_ids"][:MIN_SHARED]) for e in examples]
    common = max(set(starts), key=starts.count)
    return ([e for e, start in zip(examples, starts) if start == common],
            [e for e, start in zip(examples, starts) if start != common])


def with_shared_positions(batch: dict, lengths: list[int], shared: int, sharing: int) -> dict:
    """The collator's row with the positions of each cut example (the row's 1st to `sharing`th) going
    on from `shared`, and those of the examples after them, whole, starting at 0. The varlen edges TRL
    adds would say the examples do not share, so they go (packed_attention reads the positions)."""
    import torch
    positions = ([torch.arange(lengths[0])] + [torch.arange(shared, shared + n) for n in lengths[1:sharing]]
                 + [torch.arange(n) for n in lengths[sharing:]])
    kept = {k: v for k, v in batch.items() if k not in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                                                         "max_length_k", "seq_idx")}
    return kept | {"position_ids": torch.cat(positions)[None]}
