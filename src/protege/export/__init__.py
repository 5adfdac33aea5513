"""`protege export`: a student as the files other tools load.

- hf: the merged model, safetensors, with its tokenizer and chat template (plain transformers, vLLM).
- adapter: the LoRA adapter in peft's format, with the tokenizer (PeftModel.from_pretrained on the base).
- gguf: one file for llama.cpp, Ollama and LM Studio, loaded back with transformers' GGUF loader and
  checked logit for logit against the merged model before it is put in place.

Every output is built beside its final name and renamed into place, so a crash leaves nothing that
looks finished; out/export.json says what was written and what the GGUF check measured.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

FORMATS = ("hf", "adapter", "gguf")


class ExportError(ValueError):
    """An export that cannot be done as asked, naming the input and the reason. Requests that cannot
    work are refused before anything is written; an output that fails its check is not put in place."""


def export_model(model: Path, out: Path, formats: list[str], base: Path | None = None,
                 gguf_dtype: str = "f16") -> dict[str, Path]:
    """Write the asked formats under `out` (out/hf, out/adapter, out/model-<dtype>.gguf) and
    out/export.json. `model` is a full model directory or a LoRA adapter directory; an adapter's
    base is `base`, or the directory its adapter_config.json names."""
    from ..models import is_adapter
    from ..runs import write_json
    from . import adapter as adapter_export, gguf, hf

    model, out = Path(model), Path(out)
    adapter = model if is_adapter(model) else None
    base = adapter_export.base_of(adapter, base) if adapter else None
    _check_request(formats, model, adapter, base, gguf_dtype)
    written: dict[str, Path] = {}
    record: dict = {"model": str(model), "base": str(base) if base else None, "formats": list(formats)}
    with tempfile.TemporaryDirectory(dir=_made(out), prefix=".export-scratch.") as scratch:
        merged = None if adapter else model
        if "hf" in formats:
            merged = written["hf"] = hf.export_hf(model, out / "hf", base)
        if "adapter" in formats:
            written["adapter"] = adapter_export.export_adapter(adapter, out / "adapter", base)
        if "gguf" in formats:
            merged = merged or hf.export_hf(model, Path(scratch) / "merged", base)
            path = out / f"model-{gguf_dtype}.gguf"
            written["gguf"], record["gguf"] = gguf.export_gguf(merged, path, gguf_dtype, name=model.name)
    record["written"] = {name: str(path) for name, path in written.items()}
    write_json(out / "export.json", record)
    return written


def _check_request(formats: list[str], model: Path, adapter: Path | None, base: Path | None,
                   gguf_dtype: str) -> None:
    """Every reason to refuse, found before the first file is written."""
    from . import gguf

    if adapter is None and not (model / "config.json").is_file():
        raise ExportError(f"{model}: neither a model directory (config.json) nor a LoRA adapter (adapter_config.json)")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ExportError(f"export formats {unknown or formats}: choose from {', '.join(FORMATS)}")
    if "adapter" in formats and adapter is None:
        raise ExportError(f"{model}: a full model, not a LoRA adapter (no adapter_config.json), so there is "
                          "no adapter to export; export 'hf' for the whole model")
    if "gguf" in formats:
        from .adapter import tokenizer_dir
        gguf.check_exportable(base or model, tokenizer_dir(adapter, base) if adapter else model, gguf_dtype)


def _made(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory
