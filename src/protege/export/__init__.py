"""`protege export`: a student as the files other tools load.

- hf: the merged model, safetensors, with its tokenizer and chat template (plain transformers, vLLM).
- adapter: the LoRA adapter in peft's format, with the tokenizer (PeftModel.from_pretrained on the base).
- gguf: one file for llama.cpp, Ollama and LM Studio, loaded back with transformers' GGUF loader and
  checked logit for logit against the merged model before it is put in place.

Every output is built beside its final name and renamed into place, so a crash leaves nothing that
looks finished; out/export.json says what was written and what the GGUF check measured, and lists the
files protege wrote (sizes and times). An export replaces only what that list shows protege wrote and
nobody changed since; anything else at a name it writes (a folder of the user's, a file edited since)
is refused, naming it, unless asked to overwrite.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..config import ConfigError

FORMATS = ("hf", "adapter", "gguf")
MANIFEST = "export.json"
WRITER = "protege export"  # export.json's mark: a manifest protege wrote, not a file of the same name


class ExportError(ValueError):
    """An export that cannot be done as asked, naming the input and the reason. Requests that cannot
    work are refused before anything is written; an output that fails its check is not put in place."""


def export_model(model: Path, out: Path, formats: list[str], base: Path | None = None,
                 gguf_dtype: str = "f16", overwrite: bool = False, name: str | None = None) -> dict[str, Path]:
    """Write the asked formats under `out` (out/hf, out/adapter, out/model-<dtype>.gguf) and
    out/export.json. `model` is a full model directory or a LoRA adapter directory; an adapter's
    base is `base`, or the directory its adapter_config.json names. What protege did not write at
    those names is refused (ConfigError) unless `overwrite`."""
    from ..models import is_adapter
    from ..runs import listing, write_json
    from . import adapter as adapter_export, gguf, hf

    model, out = Path(model), Path(out)
    adapter = model if is_adapter(model) else None
    base = adapter_export.base_of(adapter, base) if adapter else None
    _check_request(formats, model, adapter, base, gguf_dtype)
    targets = {"hf": out / "hf", "adapter": out / "adapter", "gguf": out / f"model-{gguf_dtype}.gguf"}
    kept = replaceable(out, {name: targets[name] for name in formats}, overwrite)
    written: dict[str, Path] = {}
    record: dict = {"written_by": WRITER, "model": str(model), "base": str(base) if base else None,
                    "formats": list(formats)}
    with tempfile.TemporaryDirectory(dir=_made(out), prefix=".export-scratch.") as scratch:
        merged = None if adapter else model
        if "hf" in formats:
            merged = written["hf"] = hf.export_hf(model, targets["hf"], base)
        if "adapter" in formats:
            written["adapter"] = adapter_export.export_adapter(adapter, targets["adapter"], base)
        if "gguf" in formats:
            merged = merged or hf.export_hf(model, Path(scratch) / "merged", base)
            written["gguf"], record["gguf"] = gguf.export_gguf(merged, targets["gguf"], gguf_dtype,
                                                                   name or model.name)
    record["written"] = {name: str(path) for name, path in written.items()}
    record["files"] = kept | {path.name: listing(path) for path in written.values()}
    write_json(out / MANIFEST, record)
    return written


def replaceable(out: Path, targets: dict[str, Path], overwrite: bool) -> dict:
    """Refuse (ConfigError, naming it) a target or export.json that is there and is not what an earlier
    export wrote, as its export.json lists it; with `overwrite`, clear what a rename cannot replace.
    Returns the listings of earlier outputs this export leaves as they are, for the new export.json."""
    from ..runs import listing

    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: a file, not a folder; --out is the folder the export is written into")
    recorded = earlier_files(out / MANIFEST, overwrite)
    for name, path in targets.items():
        if exists(path) and recorded.get(path.name) != listing(path):
            if not overwrite:
                raise ConfigError(f"{path}: exists and is not what protege exported there ({MANIFEST} does not "
                                  "list it as it is now); pass --overwrite to replace it")
            if path.is_symlink() or path.is_dir() != (name != "gguf"):
                remove(path)
    names = {path.name for path in targets.values()}
    return {name: files for name, files in recorded.items()
            if name not in names and exists(out / name) and listing(out / name) == files}


def earlier_files(manifest: Path, overwrite: bool) -> dict:
    """What an earlier export's export.json lists as written; refused when export.json is not protege's."""
    from ..runs import read_json

    if not exists(manifest):
        return {}
    try:
        record = read_json(manifest)
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and record.get("written_by") == WRITER and isinstance(record.get("files"), dict):
        return record["files"]
    if overwrite:
        return {}
    raise ConfigError(f"{manifest}: exists and protege did not write it (not an export manifest); pass "
                      "--overwrite to replace it")


def exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _check_request(formats: list[str], model: Path, adapter: Path | None, base: Path | None,
                   gguf_dtype: str) -> None:
    """Every reason to refuse, found before the first file is written."""
    from ..models.weights import check_adapter, check_model
    from . import gguf

    if adapter is None and not (model / "config.json").is_file():
        raise ExportError(f"{model}: neither a model directory (config.json) nor a LoRA adapter (adapter_config.json)")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ExportError(f"export formats {unknown or formats}: choose from {', '.join(FORMATS)}")
    if "adapter" in formats and adapter is None:
        raise ExportError(f"{model}: a full model, not a LoRA adapter (no adapter_config.json), so there is "
                          "no adapter to export; export 'hf' for the whole model")
    if adapter:
        check_adapter(adapter, base)
    else:
        check_model(model)
    if "gguf" in formats:
        from .adapter import tokenizer_dir
        gguf.check_exportable(base or model, tokenizer_dir(adapter, base) if adapter else model, gguf_dtype)


def _made(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory
