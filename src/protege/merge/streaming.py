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
import re
import shutil
import struct
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from safetensors import safe_open

from ..models import is_adapter
from ..runs import build_dir_atomic
from . import merge_tensor
from .lines import layer_index

if TYPE_CHECKING:
    from peft import LoraConfig

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
          "U8": torch.uint8, "BOOL": torch.bool}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
INDEX = "model.safetensors.index.json"
# weights in these files would be stale next to the merged ones; an adapter's config would make the
# merged folder look like an adapter
NOT_COPIED = (".safetensors", ".bin", ".pt", ".pth", INDEX, "adapter_config.json")
# peft's key for each half of a LoRA pair: (which half, whether the product is transposed, as peft
# stores embedding LoRA as (r, vocab) and (dim, r))
LORA_PARTS = {"lora_A.weight": ("a", False), "lora_B.weight": ("b", False),
              "lora_embedding_A": ("a", True), "lora_embedding_B": ("b", True)}
LORA_KEY = re.compile(r"base_model\.model\.(.+)\.(" + "|".join(map(re.escape, LORA_PARTS)) + ")")
PEFT_PREFIX = "base_model.model."
# LoraConfig options that change what merging computes, beyond W + scale * B @ A
NOT_PLAIN_LORA = ("lora_bias", "target_parameters", "layer_replication", "use_qalora")

Source = Callable[[str, torch.Tensor], torch.Tensor]


def merge_dirs(base_dir: Path, model_dirs: list[Path], method: str, params: dict | None, out_dir: Path,
               weights: list[float] | None = None, max_shard_bytes: int = 2 << 30,
               dtype: torch.dtype | None = None) -> Path:
    """Merge fine-tuned model (or LoRA adapter) directories onto a base, writing a model directory
    with the first model's config and tokenizer files (an adapter's: the base's config and the
    adapter's tokenizer). Floating tensors are written in `dtype` when given, else the base's."""
    weights = [1.0] * len(model_dirs) if weights is None else list(weights)
    models = [Path(directory) for directory in model_dirs]
    build_dir_atomic(Path(out_dir), lambda out: write_merged(
        Path(base_dir), models, method, params or {}, weights, out, max_shard_bytes, dtype))
    return Path(out_dir)


def tensor_files(directory: Path) -> dict[str, Path]:
    """Which safetensors file holds each tensor name (reads only the files' headers)."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory}: no .safetensors weights to merge")
    where = {}
    for path in files:
        with safe_open(path, framework="pt") as handle:
            where.update(dict.fromkeys(handle.keys(), path))
    return where


def write_merged(base_dir: Path, models: list[Path], method: str, params: dict, weights: list[float],
                 out: Path, max_shard_bytes: int, dtype: torch.dtype | None = None) -> None:
    base_files = tensor_files(base_dir)
    num_layers = 1 + max((layer_index(name) or 0) for name in base_files)
    with ExitStack() as stack:
        read = tensor_reader(stack)
        sources = [model_source(directory, base_files, read) for directory in models]

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


def model_source(directory: Path, base_files: dict[str, Path], read: Callable) -> Source:
    """source(name, base tensor) -> that model's tensor of the name."""
    if is_adapter(directory):
        return lora_source(directory, base_files, read)
    files = tensor_files(directory)
    return lambda name, base: read(files, name, directory)


@dataclasses.dataclass
class LoraTarget:
    """What an adapter does to one base tensor: a LoRA pair (adapter keys of A and B) to add, and/or
    a whole tensor it saved in place of the base's (modules_to_save, trained biases)."""
    module: str = ""
    a: str = ""
    b: str = ""
    transposed: bool = False
    replaced: str = ""


def lora_source(directory: Path, base_files: dict[str, Path], read: Callable) -> Source:
    config = lora_config(directory)
    files = tensor_files(directory)
    targets = lora_targets(files, directory)
    for name in targets:
        if name not in base_files:
            raise KeyError(f"{directory}: the adapter changes {name!r}, which the base has not")

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
    targets: dict[str, LoraTarget] = {}
    for key in files:
        found = LORA_KEY.fullmatch(key)
        if found:
            module, part = found.groups()
            target = targets.setdefault(f"{module}.weight", LoraTarget())
            half, target.transposed = LORA_PARTS[part]
            target.module = module
            setattr(target, half, key)
        elif key.startswith(PEFT_PREFIX) and "lora_" not in key:
            # a whole tensor (modules_to_save, a trained bias, an embedding saved with its LoRA);
            # an embedding keeps peft's wrapper name, base_layer
            name = key[len(PEFT_PREFIX):].replace(".base_layer.", ".")
            targets.setdefault(name, LoraTarget()).replaced = key
        else:
            raise ValueError(f"{directory}: adapter tensor {key!r} is not plain LoRA; cannot merge it")
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
                shutil.copy2(path, out / path.name)
    config = out / "config.json"
    if dtype is not None and config.is_file():
        values = json.loads(config.read_text())
        values["dtype"] = str(dtype).removeprefix("torch.")
        values.pop("torch_dtype", None)  # the name transformers 5 replaced with dtype
        config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
