"""Merging model directories tensor by tensor, so a model larger than memory still merges.

Inputs are read through `safetensors.safe_open` one tensor name at a time; the output is written
the same way, into shards whose headers are planned up front from the base's shapes and dtypes
(the safetensors header must precede the data), with an index json when there is more than one
shard, as transformers saves. At any moment only one name's tensors (base, each model, result)
are in memory. A LoRA adapter directory is first merged into the base with `save_merged`, which
does load that one model whole.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

from ..models import is_adapter, save_merged
from ..runs import build_dir_atomic
from . import merge_tensor
from .lines import layer_index

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
          "U8": torch.uint8, "BOOL": torch.bool}
INDEX = "model.safetensors.index.json"
# weights in these files would be stale next to the merged ones
NOT_COPIED = (".safetensors", ".bin", ".pt", ".pth", INDEX)


def merge_dirs(base_dir: Path, model_dirs: list[Path], method: str, params: dict | None, out_dir: Path,
               weights: list[float] | None = None, max_shard_bytes: int = 2 << 30) -> Path:
    """Merge fine-tuned model (or LoRA adapter) directories onto a base, writing a model directory
    with the first model's config and tokenizer files."""
    weights = [1.0] * len(model_dirs) if weights is None else list(weights)
    with tempfile.TemporaryDirectory(prefix="protege-merge-") as scratch:
        models = [full_model(Path(base_dir), Path(d), Path(scratch) / f"model-{i}")
                  for i, d in enumerate(model_dirs)]
        build_dir_atomic(Path(out_dir), lambda out: write_merged(
            Path(base_dir), models, method, params or {}, weights, out, max_shard_bytes))
    return Path(out_dir)


def full_model(base_dir: Path, directory: Path, scratch: Path) -> Path:
    return save_merged(base_dir, directory, scratch) if is_adapter(directory) else directory


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
                 out: Path, max_shard_bytes: int) -> None:
    base_files = tensor_files(base_dir)
    model_files = [tensor_files(directory) for directory in models]
    num_layers = 1 + max((layer_index(name) or 0) for name in base_files)
    with ExitStack() as stack:
        read = tensor_reader(stack)

        def merged(name: str) -> torch.Tensor:
            base = read(base_files, name, base_dir)
            if not base.is_floating_point():  # position ids, masks: nothing to merge
                return base
            finetuned = [read(files, name, directory) for files, directory in zip(model_files, models)]
            return merge_tensor(method, base, finetuned, weights, params, name, num_layers)

        shards = plan_shards(describe(base_files), max_shard_bytes)
        for shard_name, layout in shards.items():
            write_shard(out / shard_name, layout, merged)
    if len(shards) > 1:
        write_index(out, shards)
    copy_side_files(models[0], out)


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


def describe(files: dict[str, Path]) -> list[tuple[str, str, list[int]]]:
    """(name, dtype, shape) of each tensor, from the headers (get_slice loads no data)."""
    described = []
    for name in sorted(files):
        with safe_open(files[name], framework="pt") as handle:
            piece = handle.get_slice(name)
            described.append((name, piece.get_dtype(), list(piece.get_shape())))
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


def copy_side_files(source: Path, out: Path) -> None:
    """Config, generation config and tokenizer files: everything but weights."""
    for path in source.iterdir():
        if path.is_file() and not path.name.endswith(NOT_COPIED):
            shutil.copy2(path, out / path.name)
