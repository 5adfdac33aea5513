"""Where a student comes from: `embedded:NAME`, a local Hugging Face directory, or `tiny:SEED`."""

from __future__ import annotations

from pathlib import Path

from .embedded import ModelNotFound, embedded_dir, models_cache
from .tiny import tiny_dir


def model_dir(spec: str, base: Path | None = None) -> Path:
    """Resolve a model spec to a directory of safetensors weights and a tokenizer."""
    if spec.startswith("embedded:"):
        return embedded_dir(spec.split(":", 1)[1])
    if spec.startswith("tiny:"):
        seed = spec.split(":", 1)[1] or "0"
        if not seed.isdigit():
            raise ModelNotFound(f"{spec}: expected tiny:SEED with an integer seed")
        return tiny_dir(int(seed), models_cache())
    path = Path(spec)
    if not path.is_absolute() and base is not None and (base / path).is_dir():
        path = base / path
    if not (path / "config.json").is_file():
        raise ModelNotFound(f"{spec}: not embedded:NAME, tiny:SEED, or a directory with config.json")
    return path.resolve()


def pick_device(choice: str = "auto") -> str:
    import torch
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def load_model(directory: Path, device: str = "cpu", adapter: Path | None = None):
    """Model and tokenizer, with a LoRA adapter merged in when given (faster generation). `adapter` may
    also be a full model directory, loaded instead of `directory`. Bad weights are refused first, naming
    the file (WeightsError)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_loadable(directory, adapter)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(directory, adapter))
    if adapter is not None and (adapter / "adapter_config.json").is_file():
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    elif adapter is not None:
        model = AutoModelForCausalLM.from_pretrained(adapter, dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter is None or not is_adapter(adapter):
        # the weights are exactly a directory's, so vLLM (where present) may load that directory;
        # a merged-in-memory adapter has no such directory and stays on transformers
        from .vllm_generate import WEIGHTS_DIR_ATTR
        setattr(model, WEIGHTS_DIR_ATTR, Path(adapter or directory))
    return model.to(device).eval(), tokenizer


def check_loadable(directory: Path, adapter: Path | None = None) -> None:
    """What load_model refuses before any library reads a tensor (see models.weights)."""
    from .weights import check_adapter, check_model

    if adapter is not None and is_adapter(adapter):
        check_adapter(adapter, directory)  # and the base's weights with it
        return
    check_model(directory)
    if adapter is not None:
        check_model(adapter)


def save_merged(base: Path, adapter: Path, out: Path) -> Path:
    """A LoRA adapter merged into its base and saved as a plain model directory (fp32, on CPU):
    what a later training stage starts from, or what ships."""
    model, tokenizer = load_model(base, "cpu", adapter)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tokenizer_dir(directory: Path, adapter: Path | None) -> Path:
    """protege's trained adapters carry their tokenizer; one trained elsewhere may not, and then the
    base's is the one it was trained with."""
    if adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file():
        return Path(adapter)
    return Path(directory)


def is_adapter(directory: Path) -> bool:
    return (Path(directory) / "adapter_config.json").is_file()
