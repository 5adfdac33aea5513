"""The merged model as a Hugging Face directory: safetensors weights in the base's precision, the
tokenizer and its chat template, loadable by plain transformers with no protege or peft installed."""

from __future__ import annotations

from pathlib import Path

from ..runs import build_dir_atomic
from . import ExportError


def merged_model(model: Path, base: Path | None = None):
    """(weights, tokenizer directory): a LoRA adapter is merged into its base in float32, then cast to
    the precision the base is stored in, so a bf16 base ships as bf16 and an fp32 one loses nothing."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..models import is_adapter
    from .adapter import load_peft, tokenizer_dir

    if not is_adapter(model):
        return AutoModelForCausalLM.from_pretrained(model, dtype="auto"), Path(model)
    if base is None:
        raise ExportError(f"{model}: a LoRA adapter; merging it needs its base model directory")
    stored = AutoConfig.from_pretrained(base).dtype or torch.float32
    merged = load_peft(model, base).merge_and_unload().to(stored)
    merged.config.dtype = stored
    return merged, tokenizer_dir(model, base)


def export_hf(model: Path, out: Path, base: Path | None = None) -> Path:
    build_dir_atomic(out, lambda tmp: _save(model, base, tmp))
    return out


def _save(model: Path, base: Path | None, tmp: Path) -> None:
    from transformers import AutoTokenizer

    weights, tokenizer_source = merged_model(model, base)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    weights.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    # a template lost on the way makes a served model answer in the wrong format, silently
    if AutoTokenizer.from_pretrained(tmp).chat_template != tokenizer.chat_template:
        raise ExportError(f"{tokenizer_source}: the chat template did not survive saving the tokenizer")
