"""The merged model as a Hugging Face directory: safetensors weights in the base's precision, the
tokenizer and its chat template, loadable by plain transformers with no protege or peft installed."""

from __future__ import annotations

from pathlib import Path

from ..runs import build_dir_atomic
from . import ExportError


def export_hf(model: Path, out: Path, base: Path | None = None) -> Path:
    build_dir_atomic(out, lambda tmp: _save(model, base, tmp))
    return out


def _save(model: Path, base: Path | None, tmp: Path) -> None:
    """A LoRA adapter is merged by protege's streaming merge (W + scale * B @ A per tensor, in float32,
    written in the base's precision: a bf16 base ships as bf16 and an fp32 one loses nothing), so the
    export never holds the model whole; a full model is re-saved as safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..merge.streaming import write_merged
    from ..models import is_adapter
    from .adapter import tokenizer_dir

    if is_adapter(model):
        if base is None:
            raise ExportError(f"{model}: a LoRA adapter; merging it needs its base model directory")
        write_merged(Path(base), [Path(model)], "task_arithmetic", {}, [1.0], tmp, 2 << 30)
        tokenizer_source = tokenizer_dir(model, base)
    else:
        AutoModelForCausalLM.from_pretrained(model, dtype="auto").save_pretrained(tmp)
        tokenizer_source = Path(model)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    tokenizer.save_pretrained(tmp)
    # a template lost on the way makes a served model answer in the wrong format, silently
    if AutoTokenizer.from_pretrained(tmp).chat_template != tokenizer.chat_template:
        raise ExportError(f"{tokenizer_source}: the chat template did not survive saving the tokenizer")
