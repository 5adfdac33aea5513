"""Attention for padding-free rows that computes only each example's own causal block.

With several examples laid end to end in one row, transformers' sdpa builds a block-diagonal mask
and still multiplies the whole row against itself: 8 examples of 75 tokens cost 600 x 600 scores
where 8 x 75 x 75 are used, and the CPU's masked kernel is slow in the backward pass. Here the
examples are stacked as a batch padded at the end and run through one causal
`scaled_dot_product_attention` without a mask, in fp32 on a CPU (one call per example instead when
one long example would make that batch mostly padding). Anything else (a
padded batch, a KV cache, a sliding window, soft-capping) goes to transformers' sdpa unchanged.
flash-attention's varlen kernels do the same on a GPU; they are not installed with protege."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "protege_packed_sdpa"


def example_bounds(position_ids: torch.Tensor | None,
                   cu_seq_lens: torch.Tensor | None = None) -> list[tuple[int, int]] | None:
    """(start, end) of each example in one padding-free row; None when there is no such row (no
    position ids, several rows, or a single example). TRL's padding-free collator sends the edges
    as cu_seq_lens_q; without them they are where the positions restart."""
    if position_ids is None or position_ids.ndim != 2 or position_ids.shape[0] != 1:
        return None
    if cu_seq_lens is not None:
        edges = cu_seq_lens.tolist()
    else:
        row = position_ids[0]
        # as transformers' find_packed_sequence_indices: a new example wherever a position is not the last + 1
        edges = [0] + ((row[1:] - row[:-1]) != 1).nonzero().flatten().add(1).tolist() + [row.shape[0]]
    if len(edges) < 3:
        return None
    return list(zip(edges, edges[1:]))


def shared_prefix_segments(position_ids: torch.Tensor | None) -> list[tuple[int, int, int]] | None:
    """(start, end, shared) of each example of a row laid out by shared_prefix.SharedPrefixCollator:
    the first example whole, each next one only past the prefix they share, its positions going on
    from the prefix's length (`shared`), then any examples that do not share it, whole (`shared` 0, as
    for the first). None for any other row."""
    if position_ids is None or position_ids.ndim != 2 or position_ids.shape[0] != 1:
        return None
    bounds = example_bounds(position_ids)
    if bounds is None or int(position_ids[0, 0]) != 0:
        return None
    shared = [int(position_ids[0, start]) for start, _ in bounds[1:]]
    if len(set(shared) - {0}) != 1:  # a row of separate examples (all 0) is not this layout
        return None
    return [(*bounds[0], 0)] + [(start, end, prefix) for (start, end), prefix in zip(bounds[1:], shared)]


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                        scaling: float | None = None, position_ids=None, **kwargs):
    """transformers' attention-function signature: query (batch, heads, length, head_dim)."""
    segments = None if kwargs.get("cu_seq_lens_q") is not None else shared_prefix_segments(position_ids)
    if segments is not None and query.shape[2] == key.shape[2] and not plain_only(module, kwargs):
        return shared_prefix_sdpa(query, key, value, segments, dropout, scaling)
    bounds = example_bounds(position_ids, kwargs.get("cu_seq_lens_q"))
    if bounds is None or query.shape[2] != key.shape[2] or plain_only(module, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, position_ids=position_ids, **kwargs)
    longest = max(end - start for start, end in bounds)
    # one long example among short ones would make the padded batch mostly padding
    run = padded_causal_sdpa if len(bounds) * longest <= 2 * query.shape[2] else causal_sdpa_per_example
    return run(query, key, value, bounds, dropout, scaling)


def plain_only(module, kwargs: dict) -> bool:
    """Soft-capping and sliding windows are transformers' sdpa's to do."""
    return (kwargs.get("softcap") is not None or bool(kwargs.get("sliding_window"))
            or bool(getattr(module, "sliding_window", None)))


def fp32_on_cpu(query, key, value):
    """(query, key, value, context): on a CPU in fp32 with autocast off. The CPU's flash kernel in
    bf16 took 2-3x the time of fp32 (forward and backward, 8 examples of 55-95 tokens, 9 heads:
    benchmarks/profile_sft_step.py --attention), and CPU autocast would run sdpa in bf16 again
    whatever its inputs."""
    if query.device.type != "cpu":
        return query, key, value, contextlib.nullcontext()
    return query.float(), key.float(), value.float(), torch.autocast("cpu", enabled=False)


def causal_sdpa_per_example(query, key, value, bounds, dropout: float, scaling: float | None):
    """One causal sdpa on each example's own slice."""
    dtype = query.dtype
    query, key, value, context = fp32_on_cpu(query, key, value)
    with context:
        parts = [F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True,
                                                dropout_p=dropout, scale=scaling,
                                                enable_gqa=query.shape[1] != key.shape[1])
                 for s, e in bounds]
    return torch.cat(parts, dim=2).to(dtype).transpose(1, 2).contiguous(), None


def shared_prefix_sdpa(query, key, value, segments, dropout: float, scaling: float | None):
    """Each example's queries over the shared prefix's keys and its own, causal: the prefix at the
    row's start is computed once for every example and gets the gradient of all of them, the same
    numbers as each example carrying its own copy."""
    dtype = query.dtype
    query, key, value, context = fp32_on_cpu(query, key, value)
    with context:
        parts = [prefixed_causal_sdpa(query, key, value, start, end, shared, dropout, scaling)
                 for start, end, shared in segments]
    return torch.cat(parts, dim=2).to(dtype).transpose(1, 2).contiguous(), None


def prefixed_causal_sdpa(query, key, value, start: int, end: int, shared: int, dropout: float,
                         scaling: float | None):
    """Queries start:end over keys 0:shared then start:end; query i sees every prefix key and its
    own keys up to i (sdpa's is_causal aligns the corner top-left, this needs bottom-right)."""
    keys = torch.cat([key[:, :, :shared], key[:, :, start:end]], dim=2)
    values = torch.cat([value[:, :, :shared], value[:, :, start:end]], dim=2)
    mask = torch.ones(end - start, shared + end - start, dtype=torch.bool, device=query.device).tril(shared)
    return F.scaled_dot_product_attention(query[:, :, start:end], keys, values, attn_mask=None if not shared else mask,
                                          is_causal=not shared, dropout_p=dropout, scale=scaling,
                                          enable_gqa=query.shape[1] != key.shape[1])


def padded_slots(bounds: tuple[tuple[int, int], ...], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(gather, keep): gather[i, j] is the row position of example i's token j, its last token
    repeated past its end; keep lists, in row order, the slots of the padded (examples x longest)
    grid that hold real tokens."""
    longest = max(end - start for start, end in bounds)
    slot = torch.arange(longest)
    starts, lengths = (torch.tensor(column) for column in zip(*[(s, e - s) for s, e in bounds]))
    gather = starts[:, None] + torch.minimum(slot[None, :], lengths[:, None] - 1)
    keep = (slot[None, :] < lengths[:, None]).flatten().nonzero().flatten()
    return gather.flatten().to(device), keep.to(device)


def padded_causal_sdpa(query, key, value, bounds, dropout: float, scaling: float | None):
    """The examples of a row stacked as a batch padded at the end, and one causal sdpa over it. A
    causal query never reads a later key, so the padding (copies of the last token) reaches only
    padding queries, whose outputs are dropped: every example sees exactly its own tokens. One call
    instead of one per example: fewer, larger kernels."""
    gather, keep = padded_slots(tuple(bounds), query.device)
    count, dtype = len(bounds), query.dtype
    query, key, value, context = fp32_on_cpu(query, key, value)

    def stacked(states):  # (1, heads, row, d) -> (examples, heads, longest, d)
        picked = states[0].index_select(1, gather)
        return picked.unflatten(1, (count, -1)).transpose(0, 1)

    with context:
        out = F.scaled_dot_product_attention(stacked(query), stacked(key), stacked(value), is_causal=True,
                                             dropout_p=dropout, scale=scaling,
                                             enable_gqa=query.shape[1] != key.shape[1])
    out = out.transpose(0, 1).flatten(1, 2).index_select(1, keep)  # (heads, row, d), the real tokens
    return out.to(dtype).transpose(0, 1).unsqueeze(0).contiguous(), None


def register() -> str:
    """Make NAME a valid `attn_implementation` (its masks are sdpa's, for the padded fallback)."""
    AttentionInterface.register(NAME, packed_sdpa_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
