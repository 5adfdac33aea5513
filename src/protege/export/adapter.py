"""The LoRA adapter in peft's own format: adapter_config.json and adapter_model.safetensors copied
byte for byte, with the tokenizer beside them, and shipped only once peft has loaded the copy onto
its base and found every weight it expects in it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..runs import build_dir_atomic
from . import ExportError

TOKENIZER_FILE = "tokenizer_config.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def base_of(adapter: Path, base: Path | None) -> Path:
    """The adapter's base directory: the one given, else the one its adapter_config.json names."""
    if base is not None:
        if not (Path(base) / "config.json").is_file():
            raise ExportError(f"{base}: not a model directory (no config.json); --base must be the adapter's base")
        return Path(base)
    config = Path(adapter) / "adapter_config.json"
    named = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if named and (Path(named) / "config.json").is_file():
        return Path(named)
    raise ExportError(f"{config}: field 'base_model_name_or_path' is {named!r}, which is not a model directory "
                      "here; pass the base model directory (--base)")


def load_peft(adapter: Path, base: Path):
    """The base in float32 with the adapter on top, unmerged."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).eval()


def tokenizer_dir(adapter: Path, base: Path) -> Path:
    """Trainers save the tokenizer beside the adapter; an adapter made elsewhere may only have its base's."""
    return adapter if (Path(adapter) / TOKENIZER_FILE).is_file() else base


def export_adapter(adapter: Path, out: Path, base: Path) -> Path:
    from transformers import AutoTokenizer

    missing = [name for name in ADAPTER_FILES if not (Path(adapter) / name).is_file()]
    if missing:
        raise ExportError(f"{adapter}: no {', '.join(missing)}; peft's format is {' + '.join(ADAPTER_FILES)}")

    def build(tmp: Path) -> None:
        # copied, not re-saved: peft's save_pretrained looks a hub base up on the network; copied without
        # the source's mode, so the export's files take the user's umask like every file protege writes
        for name in ADAPTER_FILES:
            shutil.copyfile(Path(adapter) / name, tmp / name)
        AutoTokenizer.from_pretrained(tokenizer_dir(adapter, base)).save_pretrained(tmp)
        check_loads(tmp, base)

    build_dir_atomic(out, build)
    return out


def check_loads(adapter: Path, base: Path) -> None:
    """peft fills a weight missing from the file with its initial value and only warns: a LoRA that
    silently does nothing. Every weight peft expects must be in the file."""
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    expected = get_peft_model_state_dict(load_peft(adapter, base), save_embedding_layers=False)
    with safe_open(Path(adapter) / ADAPTER_FILES[1], "pt") as saved:
        missing = sorted(set(expected) - set(saved.keys()))
    if missing:
        raise ExportError(f"{adapter}: {len(missing)} adapter weights missing, first {missing[0]}")
