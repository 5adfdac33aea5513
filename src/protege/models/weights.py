"""What a model or adapter directory holds, checked before a library loads it, so that every command
that loads weights (eval --model, serve, merge, export) refuses a bad one the same way: one line naming
the file, exit 2. Only the files' headers are read (config JSON, safetensors headers), never a tensor.

Weights are safetensors only: a pickle (pytorch_model.bin, .pt) runs code when it is loaded. A
safetensors file is checked by safetensors itself, which refuses an empty, truncated or overwritten
file (a header that does not parse, data that does not cover the file); an adapter is checked against
its base by shape, so an adapter of another base is named before peft fails in the middle of loading.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from ..config import ConfigError

INDEX = "model.safetensors.index.json"
PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
ADAPTER_CONFIG = "adapter_config.json"
# peft's key for each half of a LoRA pair: (which half, whether the product is transposed, as peft
# stores embedding LoRA as (r, vocab) and (dim, r))
LORA_PARTS = {"lora_A.weight": ("a", False), "lora_B.weight": ("b", False),
              "lora_embedding_A": ("a", True), "lora_embedding_B": ("b", True)}
LORA_KEY = re.compile(r"base_model\.model\.(.+)\.(" + "|".join(map(re.escape, LORA_PARTS)) + ")")
PEFT_PREFIX = "base_model.model."


class WeightsError(ConfigError):
    """A model or adapter directory whose weights cannot be loaded; str() names the file."""


@dataclasses.dataclass(frozen=True)
class Tensor:
    """Where one tensor is stored and its shape, from the file's header."""
    path: Path
    shape: tuple[int, ...]


def check_model(directory: Path) -> dict[str, Tensor]:
    """A full model directory's tensors by name, after checking its config and every weights file."""
    directory = Path(directory)
    read_config(directory / "config.json")
    return tensors(directory)


def read_config(path: Path) -> dict:
    """A JSON object from `path` (config.json, adapter_config.json), or an error naming it."""
    if not path.is_file():
        raise WeightsError(f"{path}: missing; not a model (config.json) or LoRA adapter (adapter_config.json)")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(value, dict):
        raise WeightsError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def tensors(directory: Path) -> dict[str, Tensor]:
    """Every tensor of the directory's safetensors files, checked against the index where there is one."""
    found: dict[str, Tensor] = {}
    for path in weight_files(Path(directory)):
        found.update(header(path))
    check_index(Path(directory), found)
    return found


def weight_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return files
    pickled = sorted(path for path in directory.iterdir() if path.name.endswith(PICKLED))
    if pickled:
        raise WeightsError(f"{pickled[0]}: pickled weights, which run code when loaded; protege loads "
                           "safetensors only (convert it: load it yourself and save_pretrained the model)")
    raise WeightsError(f"{directory}: no .safetensors weights")


def header(path: Path) -> dict[str, Tensor]:
    """The tensors a safetensors file holds, as its header says; safetensors refuses a header that does
    not parse or data that does not exactly cover the rest of the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            return {name: Tensor(path, tuple(handle.get_slice(name).get_shape())) for name in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None


def check_index(directory: Path, found: dict[str, Tensor]) -> None:
    """transformers loads a sharded model by its index (where there is no model.safetensors): every
    tensor it names must be in the shard named."""
    path = directory / INDEX
    if not path.is_file() or (directory / "model.safetensors").is_file():
        return
    weight_map = read_config(path).get("weight_map")
    if not isinstance(weight_map, dict):
        raise WeightsError(f"{path}: no weight_map object")
    for name, shard in weight_map.items():
        if name not in found or found[name].path.name != shard:
            raise WeightsError(f"{directory / str(shard)}: has no tensor {name!r}, which {INDEX} puts there")


@dataclasses.dataclass
class LoraTarget:
    """What an adapter does to one base tensor: a LoRA pair (adapter keys of A and B) to add, and/or
    a whole tensor it saved in place of the base's (modules_to_save, trained biases)."""
    module: str = ""
    a: str = ""
    b: str = ""
    transposed: bool = False
    replaced: str = ""


def adapter_targets(keys) -> tuple[dict[str, LoraTarget], list[str]]:
    """(base tensor name -> what the adapter does to it, the keys that are not plain LoRA), read from
    peft's key names."""
    targets: dict[str, LoraTarget] = {}
    others = []
    for key in keys:
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
            targets.setdefault(key[len(PEFT_PREFIX):].replace(".base_layer.", "."), LoraTarget()).replaced = key
        else:
            others.append(key)
    return targets, others


def check_adapter(adapter: Path, base: Path) -> dict[str, Tensor]:
    """A LoRA adapter's tensors by name, after checking that each fits the base's tensor it changes."""
    adapter = Path(adapter)
    config = read_config(adapter / ADAPTER_CONFIG)
    base_tensors = check_model(base)
    found = tensors(adapter)
    targets, _ = adapter_targets(found)
    for name, target in targets.items():
        check_target(adapter, base, name, target, found, base_tensors, bool(config.get("fan_in_fan_out")))
    return found


def check_target(adapter: Path, base: Path, name: str, target: LoraTarget, found: dict[str, Tensor],
                 base_tensors: dict[str, Tensor], fan_in_fan_out: bool) -> None:
    key = target.replaced or target.a or target.b
    if name not in base_tensors:
        raise WeightsError(f"{found[key].path}: changes {name!r}, which the base {base} has not: an adapter of "
                           "another base")
    expected = base_tensors[name].shape
    if target.replaced and found[target.replaced].shape != expected:
        shape = found[target.replaced].shape
        raise WeightsError(f"{found[key].path}: {target.replaced} is {list(shape)}, but {name} of the base "
                           f"{base} is {list(expected)}: an adapter of another base")
    if target.a and target.b:
        a, b = found[target.a].shape, found[target.b].shape
        product = (b[0], a[-1]) if not (target.transposed or fan_in_fan_out) else (a[-1], b[0])
        if len(a) != 2 or len(b) != 2 or product != expected:
            raise WeightsError(f"{found[key].path}: the LoRA pair of {name} makes a {list(product)} update, but "
                               f"the base {base} has it {list(expected)}: an adapter of another base")
