#!/usr/bin/env python
"""Where a protege sft step spends its time: step seconds and the torch profiler's top operators.

Trains protege's `sft` with LoRA on the first --examples chat records of train_throughput.py's data
(batch 8), times every optimizer step, and profiles steps 3 to 5. With --attention it instead times
one layer's attention over a packed row of 8 examples (forward and backward, the embedded student's
9 query and 3 key/value heads): the block-diagonal mask, one causal sdpa per example in bf16, and
protege's two ways in fp32 (one call per example, and the examples padded into one batch).

    python benchmarks/profile_sft_step.py              # embedded SmolLM2-135M
    python benchmarks/profile_sft_step.py --attention
    python benchmarks/profile_sft_step.py --examples 128 --compile   # decoder layers under torch.compile
    python benchmarks/profile_sft_step.py --ablate 40

With --ablate N it times N rounds of one forward and backward per variant on the same batch, in one
process: protege's LoRA step as it trains, then with one speed-up at a time turned off (the fused
LoRA sum, the bf16 copy of the tied output head, the norm outputs cast once). On shared cores the
machine's speed drifts within seconds, so each variant is compared with the full step of its own
round and the median of those paired ratios is printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput  # noqa: E402  (the data both benchmarks train on)


def profile_steps(model: str, examples: int, shapes: bool = False, compiled: bool = False) -> None:
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    import protege.train.sft as sft
    from protege.config import TrainConfig
    from protege.models import model_dir

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.profiler, self.start = [], None, 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()
            if state.global_step == 3:
                self.profiler = profile(activities=[ProfilerActivity.CPU], record_shapes=shapes)
                self.profiler.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.start)
            if state.global_step == 6:
                self.profiler.__exit__(None, None, None)

    timer, attach = StepTimer(), sft.attach_callbacks

    def attach_timer(trainer, counter=None):
        attach(trainer, counter)
        trainer.add_callback(timer)
        if compiled:  # the experiment behind docs/benchmarks.md's torch.compile line; the first step compiles
            for layer in trainer.model.get_decoder().layers:
                layer.compile(dynamic=True)

    sft.attach_callbacks = attach_timer
    cfg = TrainConfig(adapter="lora", batch_size=8, epochs=1, learning_rate=1e-3, report_to=["none"], seed=42)
    sft.train_sft(model_dir(model, train_throughput.REPO), train_throughput.build_records(examples), cfg,
                  Path(tempfile.mkdtemp(prefix="protege-profile-")))
    if timer.profiler is not None:
        averages = timer.profiler.key_averages(group_by_input_shape=shapes)
        print(averages.table(sort_by="self_cpu_time_total", row_limit=30 if shapes else 20))
    print("step seconds:", " ".join(f"{s:.2f}" for s in timer.seconds))


def speedup_switches(model) -> dict:
    """name -> switch(on): turns one of protege's LoRA step speed-ups on or off in `model`."""
    from protege.train.fused_lora import fuse_lora_forwards

    layers = [m for m in model.modules() if hasattr(m, "lora_A")]
    head, tied = model.get_output_embeddings(), model.get_input_embeddings().weight
    bf16_head = head.weight
    norms = [m for layer in model.get_decoder().layers for m in (layer.input_layernorm, layer.post_attention_layernorm)]
    hooks = [dict(norm._forward_hooks) for norm in norms]
    assert bf16_head is not tied and all(hooks), "the model lacks protege's LoRA speed-ups"

    def fused(on):
        if on:
            fuse_lora_forwards(model)
            return
        for layer in layers:
            layer.__dict__.pop("forward", None)  # back to peft's class forward

    def head_copy(on):
        head.weight = bf16_head if on else tied

    def norm_cast(on):
        for norm, hook in zip(norms, hooks):
            norm._forward_hooks.clear()
            norm._forward_hooks.update(hook if on else {})
    return {"fused LoRA sum": fused, "bf16 output head": head_copy, "norm outputs cast once": norm_cast}


def ablate(model: str, rounds: int) -> None:
    from protege.config import TrainConfig
    from protege.models import model_dir
    from protege.train.sft import build_sft_trainer

    cfg = TrainConfig(adapter="lora", batch_size=8, report_to=["none"], seed=42)
    trainer, _, _ = build_sft_trainer(model_dir(model, train_throughput.REPO), train_throughput.build_records(8), cfg,
                                      Path(tempfile.mkdtemp(prefix="protege-profile-")))
    batch, switches = trainer.data_collator([trainer.train_dataset[i] for i in range(8)]), speedup_switches(trainer.model)
    trainer.model.train()

    def step_seconds(off: str | None) -> float:
        for name, switch in switches.items():
            switch(name != off)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=trainer.args.bf16):
            trainer.compute_loss(trainer.model, dict(batch)).backward()
        trainer.model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times = {off: [] for off in (None, *switches)}
    for _ in range(rounds + 1):  # the first round warms up
        for off in times:
            times[off].append(step_seconds(off))
    print(f"full step: median {statistics.median(times[None][1:]):.3f} s over {rounds} rounds")
    for off in switches:
        ratios = [slower / full for slower, full in zip(times[off][1:], times[None][1:])]
        print(f"without the {off}: {statistics.median(ratios):.3f}x the full step's time (median of {rounds} paired ratios)")


def time_attention(repeats: int = 40) -> None:
    lengths, heads, kv_heads, head_dim = [62, 95, 71, 88, 55, 80, 77, 72], 9, 3, 64
    edges = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    total = edges[-1]

    def tensor(n):  # (1, heads, tokens, head_dim), laid out as the model's transpose leaves it
        return torch.randn(1, total, n, head_dim, dtype=torch.bfloat16, requires_grad=True).transpose(1, 2)

    q, k, v = tensor(heads), tensor(kv_heads), tensor(kv_heads)
    example = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    mask = (example[:, None] == example[None, :]) & torch.ones(total, total, dtype=torch.bool).tril()

    def per_example_bf16():  # what protege's attention avoids on a CPU: the flash kernel in bf16
        return torch.cat([F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True,
                                                         enable_gqa=True) for s, e in zip(edges, edges[1:])], 2)

    # protege's two ways, as the model calls them: bf16 inputs, cast to fp32 inside on a CPU
    from protege.train.packed_attention import causal_sdpa_per_example, padded_causal_sdpa
    bounds = list(zip(edges, edges[1:]))
    ways = {"block-diagonal mask, bf16": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                                               enable_gqa=True),
            "per example, bf16": per_example_bf16,
            "per example, fp32 (protege)": lambda: causal_sdpa_per_example(q, k, v, bounds, 0.0, None)[0],
            "examples padded into one batch, fp32 (protege)": lambda: padded_causal_sdpa(q, k, v, bounds, 0.0, None)[0]}
    for name, run in ways.items():
        run().float().sum().backward()  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            run().float().sum().backward()
        print(f"{name}: {(time.perf_counter() - start) / repeats * 1000:.1f} ms forward and backward")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct", help="embedded:NAME, tiny:SEED or a directory")
    parser.add_argument("--examples", type=int, default=64, help="training examples, batch 8 (default: %(default)s)")
    parser.add_argument("--attention", action="store_true", help="time the attention variants instead")
    parser.add_argument("--shapes", action="store_true", help="the operators split by input shapes")
    parser.add_argument("--compile", action="store_true", help="torch.compile each decoder layer first")
    parser.add_argument("--ablate", type=int, metavar="ROUNDS", help="time each LoRA speed-up turned off, paired")
    args = parser.parse_args()
    if args.ablate:
        ablate(args.model, args.ablate)
    elif args.attention:
        time_attention()
    else:
        profile_steps(args.model, args.examples, args.shapes, args.compile)


if __name__ == "__main__":
    main()
