"""Merging model directories tensor by tensor, so a model larger than memory still merges.

Inputs are read through `safetensors.safe_open` one tensor name at a time; the output is written
the same way, into shards whose headers are planned up front from the base's shapes and dtypes
(the safetensors header must precede the data), with an index json when there is more than one
shard, as transformers saves. At any moment only one name's tensors (base, each model, result)
are in memory. A LoRA adapter directory is streamed too: the tensor of one name is computed when
it is needed, W + scale * B @ A from the adapter's lora_A and lora_B of that module, as peft's
merge computes it, so an adapter never loads its base whole either.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import struct
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from safetensors import safe_open

from ..models import is_adapter
from ..config import ConfigError
from ..models.weights import (INDEX, LoraTarget, Tensor, adapter_targets, check_adapter, check_model,
                              read_config)
from ..runs import build_dir_atomic, listing, read_json, write_json
from . import merge_tensor
from .lines import layer_index

if TYPE_CHECKING:
    from peft import LoraConfig

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
          "U8": torch.uint8, "BOOL": torch.bool}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
# weights in these files would be stale next to the merged ones; an adapter's config would make the
# merged folder look like an adapter; a merge's record describes that merge
MANIFEST = "merge.json"
WRITER = "protege merge"  # merge.json's mark: protege's record, not a file of the same name
NOT_COPIED = (".safetensors", ".bin", ".pt", ".pth", INDEX, "adapter_config.json", MANIFEST)
# LoraConfig options that change what merging computes, beyond W + scale * B @ A
NOT_PLAIN_LORA = ("lora_bias", "target_parameters", "layer_replication", "use_qalora")

# config fields that decide what the tensors mean: models differing in one are not the same network
STRUCTURE = ("model_type", "architectures", "num_hidden_layers", "hidden_size", "intermediate_size",
             "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings",
             "hidden_act", "rms_norm_eps", "max_position_embeddings", "rope_parameters", "rope_theta",
             "rope_scaling", "attention_bias", "mlp_bias", "sliding_window", "layer_types")

Source = Callable[[str, torch.Tensor], torch.Tensor]


def merge_dirs(base_dir: Path, model_dirs: list[Path], method: str, params: dict | None, out_dir: Path,
               weights: list[float] | None = None, max_shard_bytes: int = 2 << 30,
               dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
    """Merge fine-tuned model (or LoRA adapter) directories onto a base, writing a model directory
    with the first model's config and tokenizer files (an adapter's: the base's config and the
    adapter's tokenizer), and merge.json saying what was merged and listing what was written. Floating
    tensors are written in `dtype` when given, else the base's. An `out_dir` that is there and is not
    an earlier merge's, unchanged, is refused (ConfigError) unless `overwrite`."""
    weights = [1.0] * len(model_dirs) if weights is None else list(weights)
    models, out_dir = [Path(directory) for directory in model_dirs], Path(out_dir)
    if not overwrite:
        refuse_replacing(out_dir)
    elif out_dir.is_symlink() or out_dir.is_file():
        out_dir.unlink()  # a rename does not replace a file with a folder

    def build(out: Path) -> None:
        write_merged(Path(base_dir), models, method, params or {}, weights, out, max_shard_bytes, dtype)
        write_json(out / MANIFEST, {"written_by": WRITER, "method": method, "base": str(base_dir),
                                    "models": [str(model) for model in models], "weights": weights,
                                    "files": listing(out)})
    build_dir_atomic(out_dir, build)
    return out_dir


def refuse_replacing(out: Path) -> None:
    if (out.exists() or out.is_symlink()) and not earlier_merge(out):
        raise ConfigError(f"{out}: exists and is not a merge protege wrote there ({MANIFEST} does not list it as "
                          "it is now); pass --overwrite to replace it")


def earlier_merge(out: Path) -> bool:
    """Whether `out` is a merge protege wrote and nobody changed since: exactly what its merge.json lists."""
    if out.is_symlink() or not out.is_dir():
        return False
    try:
        record = read_json(out / MANIFEST)
    except (OSError, ValueError):
        return False
    now = {name: stamp for name, stamp in listing(out).items() if name != MANIFEST}
    return isinstance(record, dict) and record.get("written_by") == WRITER and record.get("files") == now


def write_merged(base_dir: Path, models: list[Path], method: str, params: dict, weights: list[float],
                 out: Path, max_shard_bytes: int, dtype: torch.dtype | None = None) -> None:
    base_tensors = check_model(base_dir)
    base_files = files_of(base_tensors)
    model_files = [checked_files(directory, base_dir, base_tensors) for directory in models]
    num_layers = 1 + max((layer_index(name) or 0) for name in base_files)
    with ExitStack() as stack:
        read = tensor_reader(stack)
        sources = [model_source(directory, files, read) for directory, files in zip(models, model_files)]

        def merged(name: str) -> torch.Tensor:
            base = read(base_files, name, base_dir)
            if not base.is_floating_point():  # position ids, masks: nothing to merge
                return base
            finetuned = [source(name, base) for source in sources]
            result = merge_tensor(method, base, finetuned, weights, params, name, num_layers)
            return result if dtype is None else result.to(dtype)

        shards = plan_shards(describe(base_files, dtype), max_shard_bytes)
        for shard_name, layout in shards.items():
            write_shard(out / shard_name, layout, merged)
    if len(shards) > 1:
        write_index(out, shards)
    copy_side_files([base_dir, models[0]] if is_adapter(models[0]) else [models[0]], out, dtype)


def files_of(found: dict[str, Tensor]) -> dict[str, Path]:
    """Which safetensors file holds each tensor name."""
    return {name: tensor.path for name, tensor in found.items()}


def checked_files(directory: Path, base_dir: Path, base_tensors: dict[str, Tensor]) -> dict[str, Path]:
    """The model's tensor files, once it is known to be the base's network: a LoRA adapter fits the
    base's shapes; a full model has the base's config where that shapes the network, and exactly the
    base's tensor names and shapes (one with a layer more would be merged only where the base has
    tensors, under a config that still says it has the layer)."""
    if is_adapter(directory):
        return files_of(check_adapter(directory, base_dir))
    same_structure(directory, base_dir)
    found = check_model(directory)
    same_tensors(directory, found, base_tensors)
    return files_of(found)


def same_structure(directory: Path, base_dir: Path) -> None:
    ours, base = structure(directory), structure(base_dir)
    for key in STRUCTURE:
        if ours.get(key) != base.get(key):
            raise ValueError(f"{directory}: config {key} {ours.get(key)!r} does not match the base's "
                             f"{base.get(key)!r} ({base_dir})")


def structure(directory: Path) -> dict:
    """The config as transformers reads it, so that files written by different transformers versions
    (rope_theta at the top or in rope_parameters) compare equal; a text model's own config first."""
    from transformers import AutoConfig

    read_config(directory / "config.json")  # a config that is not JSON is named, not a traceback
    config = AutoConfig.from_pretrained(directory)
    top, text = config.to_dict(), config.get_text_config().to_dict()
    return {key: text.get(key, top.get(key)) for key in STRUCTURE}


def same_tensors(directory: Path, found: dict[str, Tensor], base_tensors: dict[str, Tensor]) -> None:
    for name in sorted(found.keys() | base_tensors.keys()):
        if name not in found:
            raise KeyError(f"{directory}: has no tensor {name!r}, which the base has")
        if name not in base_tensors:
            raise ValueError(f"{directory}: has tensor {name!r}, which the base has not")
        if found[name].shape != base_tensors[name].shape:
            raise ValueError(f"{directory}: {name} of shape {list(found[name].shape)} does not match the "
                             f"base's {list(base_tensors[name].shape)}")


def model_source(directory: Path, files: dict[str, Path], read: Callable) -> Source:
    """source(name, base tensor) -> that model's tensor of the name."""
    if is_adapter(directory):
        return lora_source(directory, files, read)
    return lambda name, base: read(files, name, directory)


def lora_source(directory: Path, files: dict[str, Path], read: Callable) -> Source:
    """Checked against the base's names and shapes already (models.weights.check_adapter)."""
    config = lora_config(directory)
    targets = lora_targets(files, directory)

    def tensor(name: str, base: torch.Tensor) -> torch.Tensor:
        target = targets.get(name)
        if target is None:
            return base
        weight = read(files, target.replaced, directory) if target.replaced else base
        if not target.a:
            return weight
        a, b = read(files, target.a, directory), read(files, target.b, directory)
        delta = lora_delta(a, b, lora_scale(config, target.module, a.shape[0]),
                           target.transposed or config.fan_in_fan_out)
        if delta.shape != weight.shape:
            raise ValueError(f"{directory}: LoRA update of {name} is {tuple(delta.shape)}, the weight "
                             f"{tuple(weight.shape)}")
        # float32, not the base's dtype: the task vector the merge takes is then scale * B @ A itself
        return weight.float() + delta
    return tensor


def lora_targets(files: dict[str, Path], directory: Path) -> dict[str, LoraTarget]:
    """The base tensor name each adapter tensor belongs to, read from peft's key names."""
    targets, others = adapter_targets(files)
    if others:
        raise ValueError(f"{directory}: adapter tensor {others[0]!r} is not plain LoRA; cannot merge it")
    for name, target in targets.items():
        if bool(target.a) != bool(target.b):
            raise ValueError(f"{directory}: {name} has only half of its LoRA pair")
    return targets


def lora_config(directory: Path) -> LoraConfig:
    """The adapter's peft LoraConfig, refused when it is a variant that merges differently."""
    from peft import LoraConfig, PeftConfig

    config = PeftConfig.from_pretrained(str(directory))
    if not isinstance(config, LoraConfig):
        raise ValueError(f"{directory}: a {config.peft_type} adapter; only LoRA adapters merge")
    fields = {field.name: field for field in dataclasses.fields(config)}
    variants = [name for name, field in fields.items() if field.metadata.get("is_lora_variant")]
    used = [name for name in (*variants, *NOT_PLAIN_LORA) if getattr(config, name, None)]
    if config.init_lora_weights in fields["init_lora_weights"].metadata.get("lora_variants", ()):
        used.append(f"init_lora_weights={config.init_lora_weights}")
    if used:
        raise ValueError(f"{directory}: adapter uses {', '.join(used)}; only plain LoRA merges tensor by tensor")
    return config


def lora_scale(config: LoraConfig, module: str, rank: int) -> float:
    """alpha / r, or alpha / sqrt(r) with rsLoRA; alpha per module from alpha_pattern, as peft picks it.
    The rank is read from lora_A's shape, which already reflects rank_pattern."""
    from peft.utils.other import get_pattern_key

    alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), module), config.lora_alpha)
    return alpha / math.sqrt(rank) if config.use_rslora else alpha / rank


def lora_delta(a: torch.Tensor, b: torch.Tensor, scale: float, transposed: bool) -> torch.Tensor:
    """peft's get_delta_weight: (B @ A) * scale in float32, transposed for fan_in_fan_out layers
    (GPT-2's Conv1D) and embeddings."""
    delta = (b.float() @ a.float()) * scale
    return delta.T if transposed else delta


def tensor_reader(stack: ExitStack) -> Callable:
    """read(files, name, directory) -> that one tensor; file handles stay open (memory-mapped, so
    an open file holds no tensor in memory) until the stack closes."""
    handles = {}

    def read(files: dict[str, Path], name: str, directory: Path) -> torch.Tensor:
        if name not in files:
            raise KeyError(f"{directory}: has no tensor {name!r}, which the base has")
        path = files[name]
        if path not in handles:
            handles[path] = stack.enter_context(safe_open(path, framework="pt"))
        return handles[path].get_tensor(name)
    return read


def describe(files: dict[str, Path], dtype: torch.dtype | None = None) -> list[tuple[str, str, list[int]]]:
    """(name, dtype, shape) of each output tensor, from the headers (get_slice loads no data);
    floating tensors take `dtype` when given."""
    described = []
    for name in sorted(files):
        with safe_open(files[name], framework="pt") as handle:
            piece = handle.get_slice(name)
            stored = piece.get_dtype()
            if dtype is not None and DTYPES[stored].is_floating_point:
                stored = DTYPE_NAMES[dtype]
            described.append((name, stored, list(piece.get_shape())))
    return described


def nbytes(dtype: str, shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count * DTYPES[dtype].itemsize


def plan_shards(described: list[tuple[str, str, list[int]]], max_shard_bytes: int) -> dict[str, list]:
    """Tensors grouped, in order, into shards of at most max_shard_bytes (a bigger tensor gets its own)."""
    groups, size = [[]], 0
    for entry in described:
        need = nbytes(entry[1], entry[2])
        if groups[-1] and size + need > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += need
    if len(groups) == 1:
        return {"model.safetensors": groups[0]}
    total = len(groups)
    return {f"model-{i:05d}-of-{total:05d}.safetensors": group for i, group in enumerate(groups, 1)}


def shard_header(layout: list[tuple[str, str, list[int]]]) -> bytes:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape in layout:
        end = offset + nbytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    # padded with spaces so the data starts 8-byte aligned, as safetensors itself writes
    return text + b" " * (-len(text) % 8)


def write_shard(path: Path, layout: list, merged: Callable[[str], torch.Tensor]) -> None:
    header = shard_header(layout)
    with open(path, "wb") as shard:
        shard.write(struct.pack("<Q", len(header)) + header)
        for name, dtype, shape in layout:
            tensor = merged(name)
            if tensor.dtype != DTYPES[dtype] or list(tensor.shape) != shape:
                raise ValueError(f"{name}: merge gave {tensor.dtype} {list(tensor.shape)}, "
                                 f"expected {dtype} {shape}")
            shard.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def write_index(out: Path, shards: dict[str, list]) -> None:
    weight_map = {name: shard for shard, layout in shards.items() for name, _, _ in layout}
    total = sum(nbytes(dtype, shape) for layout in shards.values() for _, dtype, shape in layout)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")


def copy_side_files(sources: list[Path], out: Path, dtype: torch.dtype | None = None) -> None:
    """Config, generation config and tokenizer files: everything but weights; a later source's file
    wins. The config's dtype is rewritten when the weights were cast."""
    for source in sources:
        for path in source.iterdir():
            if path.is_file() and not path.name.endswith(NOT_COPIED):
                shutil.copyfile(path, out / path.name)  # not the source's mode: the user's umask
    config = out / "config.json"
    if dtype is not None and config.is_file():
        values = json.loads(config.read_text())
        values["dtype"] = str(dtype).removeprefix("torch.")
        values.pop("torch_dtype", None)  # the name transformers 5 replaced with dtype
        config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
