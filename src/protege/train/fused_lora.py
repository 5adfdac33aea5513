"""LoRA's update added inside the matmul that computes it.

peft computes a LoRA layer as `base(x) + lora_B(lora_A(x)) * scaling`: the low-rank product, the
scaling and the sum each read and write a whole (tokens x out_features) tensor, forward and
backward. `torch.addmm(base(x), lora_A(x), (scaling * B).T)` does the same sum with one: the
scaling moves onto B (rank x out_features, small) and the add into the matmul's accumulator.
On the embedded student's SFT step on 2 CPU cores that is 2.5-3% of the step
(`benchmarks/profile_sft_step.py --ablate`). Every LoRA trainer here installs it. Anything the
plain sum does not cover (dropout, DoRA and other variants, a LoRA bias, several adapters, merged
or disabled adapters, extra arguments) goes to peft's own forward."""

from __future__ import annotations

import types

import torch
from peft.tuners.lora import Linear as LoraLinear


def plain_adapter(layer: LoraLinear, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
    """The one active adapter's name when this call is the plain LoRA sum; None otherwise."""
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if args or kwargs or layer.disable_adapters or layer.merged or len(active) != 1:
        return None
    name, a, b = active[0], layer.lora_A[active[0]], layer.lora_B[active[0]]
    if (name in layer.lora_variant or not isinstance(layer.lora_dropout[name], torch.nn.Identity)
            or b.bias is not None):
        return None
    # addmm takes one dtype: autocast gives it one, else the weights must agree (peft would cast)
    one_dtype = layer.base_layer.weight.dtype == a.weight.dtype == b.weight.dtype
    return name if one_dtype or torch.is_autocast_enabled(x.device.type) else None


def fused_lora_forward(layer: LoraLinear, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = plain_adapter(layer, x, args, kwargs)
    if name is None:
        return type(layer).forward(layer, x, *args, **kwargs)
    result = layer.base_layer(x)
    low_rank = layer.lora_A[name](layer._cast_input_dtype(x, layer.lora_A[name].weight.dtype))
    scaled_b = layer.lora_B[name].weight * layer.scaling[name]
    fused = torch.addmm(result.reshape(-1, result.shape[-1]), low_rank.reshape(-1, low_rank.shape[-1]), scaled_b.t())
    return fused.view(result.shape).to(result.dtype)


def fuse_lora_forwards(model: torch.nn.Module) -> int:
    """Give every peft LoRA linear layer of `model` the fused forward; returns how many."""
    layers = [module for module in model.modules() if isinstance(module, LoraLinear)]
    for layer in layers:
        layer.forward = types.MethodType(fused_lora_forward, layer)
    return len(layers)
