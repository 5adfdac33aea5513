"""GGUF for llama-family students, written with the `gguf` package the way llama.cpp's
convert_hf_to_gguf.py writes it, and checked by loading the file back with transformers' GGUF loader.

What llama.cpp expects and transformers' loader (modeling_gguf_pytorch_utils, legacy path for llama)
undoes: llama.cpp's tensor names (from gguf's own name map), Q and K rows permuted per head, the
output matrix left out when it is tied to the embedding, norms kept in f32, and a byte-level BPE
vocabulary as tokenizer.ggml.model "gpt2" with its merges, token types and chat template.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import numpy as np

from ..runs import temp_file
from . import ExportError

SUPPORTED_TYPES = ("llama",)
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
# Largest logit difference accepted, as a fraction of the largest logit. f32 holds the same numbers
# (measured: identical logits). f16 rounds each weight by up to 2^-11 = 4.9e-4 of itself; q8_0 by up to
# half a step of absmax/127 per block of 32 (0.4% of the block's largest weight). These errors are
# independent across weights and partly cancel, but build up with depth: measured, f16 gives 3e-4 of
# the largest logit on the 2-layer test model and 1e-3 on 30-layer SmolLM2-135M; q8_0 5e-3 and 3.3e-2.
# The bounds leave room for deeper students. A skipped Q/K permutation, measured on SmolLM2, moves
# logits by 0.74 of the largest; on the random test model only by 5e-3 (its attention is near uniform),
# which the f32 bound still catches.
TOLERANCE = {"f32": 1e-5, "f16": 1e-2, "q8_0": 1e-1}
CHECK_PROMPTS = ("The capital of France is", "Convert 3 March 2024 to ISO 8601.", "def add(a, b):\n    return")


def check_exportable(config_dir: Path, tokenizer_dir: Path, dtype: str) -> None:
    """Refuse, naming the reason, what this writer cannot express or transformers could not load back."""
    from transformers import AutoConfig

    if dtype not in FILE_TYPES:
        raise ExportError(f"GGUF dtype {dtype!r}: choose from {', '.join(FILE_TYPES)}")
    config = AutoConfig.from_pretrained(config_dir)
    if config.model_type not in SUPPORTED_TYPES:
        raise ExportError(f"{config_dir}: model_type {config.model_type!r}; GGUF export handles llama-family "
                          f"students only (model_type {', '.join(SUPPORTED_TYPES)}); export 'hf' instead")
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope != "default" or config.attention_bias or config.mlp_bias:
        raise ExportError(f"{config_dir}: rope_type {rope!r}, attention_bias {config.attention_bias}, mlp_bias "
                          f"{config.mlp_bias}; GGUF export handles plain llama (default rope, no biases)")
    pre_tokenizer_name(_tokenizer_json(tokenizer_dir), tokenizer_dir)


def _tokenizer_json(directory: Path) -> dict:
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise ExportError(f"{path}: missing; GGUF export needs a fast (tokenizer.json) tokenizer")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise ExportError(f"{path}: a {model.get('type')} tokenizer with a {decoder.get('type')} decoder; GGUF "
                          "export writes byte-level BPE (llama.cpp's 'gpt2' tokenizer model) only")
    return spec


def pre_tokenizer_name(spec: dict, directory: Path = Path(".")) -> str:
    """llama.cpp's name (tokenizer.ggml.pre) for how this tokenizer splits text before BPE. The names
    of the Split regexes come from transformers' own table, so transformers reads the file back the same
    way; plain byte-level splitting is llama.cpp's "gpt-2" (it refuses "gpt2"), which transformers reads
    as its default byte-level split."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    steps = pre.get("pretokenizers") or []
    if [s.get("type") for s in steps] == ["Split", "ByteLevel"] and steps[1].get("use_regex") is False:
        # several names share a regex; the first listed is the canonical one
        named = {split: name for name, split in reversed(GGUF_PRE_TOKENIZER_SPLITS.items())}
        if (regex := (steps[0].get("pattern") or {}).get("Regex")) in named:
            return named[regex]
    raise ExportError(f"{Path(directory) / 'tokenizer.json'}: pre_tokenizer {json.dumps(pre)[:200]} has no "
                      "llama.cpp name known to transformers' GGUF loader")


def permute_rows(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's Q/K row order. HF rotary embedding pairs dimension i of a head with i + d/2
    (rotate_half); llama.cpp's pairs 2i with 2i+1. Interleaving each head's two halves makes the
    same rotation: rows [a0 a1 b0 b1] of a head become [a0 b0 a1 b1]."""
    half = weights.shape[0] // heads // 2
    return weights.reshape(heads, 2, half, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def gguf_tensors(state_dict: dict, config):
    """(llama.cpp name, float32 array) for every tensor, in the layout llama.cpp computes with."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for hf_name, tensor in state_dict.items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp ties by leaving `output` out; transformers' loader reads that the same way
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"{hf_name}: a tensor with no llama.cpp name; not a plain llama model")
        array = tensor.detach().float().cpu().numpy()
        if ".attn_q." in name:
            array = permute_rows(array, config.num_attention_heads)
        elif ".attn_k." in name:
            array = permute_rows(array, config.num_key_value_heads)
        yield name, array


def tensor_type(array: np.ndarray, dtype: str) -> gguf.GGMLQuantizationType:
    """As llama.cpp's converter: norms (1-D) stay f32 whatever the file type, being tiny and what every
    activation is scaled by; a matrix whose rows do not split into q8_0's blocks of 32 falls back to f16."""
    kind = gguf.GGMLQuantizationType
    if array.ndim == 1 or dtype == "f32":
        return kind.F32
    if dtype == "q8_0" and gguf.quants.Q8_0.can_quantize(array):
        return kind.Q8_0
    return kind.F16


def vocab(tokenizer, size: int) -> tuple[list[str], list[int]]:
    """Tokens by id in byte-level spelling, and llama.cpp's token types: special added tokens are
    CONTROL (kept whole, never produced from text), other added ones USER_DEFINED, ids past the
    tokenizer's end (an embedding padded to a round size) UNUSED placeholders."""
    types = gguf.TokenType
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    if max(by_id) >= size:
        raise ExportError(f"the tokenizer has id {max(by_id)}, past the model's vocab_size {size}")
    added = tokenizer.added_tokens_decoder
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    kinds = [types.UNUSED if i not in by_id else types.NORMAL if i not in added
             else types.CONTROL if added[i].special else types.USER_DEFINED for i in range(size)]
    return tokens, [int(k) for k in kinds]


def added_specials(tokenizer) -> dict[str, bool]:
    """Whether encoding text adds BOS in front and EOS behind, as measured on the tokenizer itself:
    SpecialVocab guesses it from config files, and llama.cpp's default differs by tokenizer kind."""
    ids = tokenizer("a").input_ids
    return {"bos": tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id,
            "eos": tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id}


def _write_architecture(writer: gguf.GGUFWriter, config, name: str, dtype: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(FILE_TYPES[dtype])
    if dtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_tokenizer(writer: gguf.GGUFWriter, hf_dir: Path, size: int) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(_tokenizer_json(hf_dir), hf_dir))
    tokens, types = vocab(tokenizer, size)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # merges, special token ids and the chat template, read from the files as llama.cpp's converter reads them
    special = gguf.SpecialVocab(hf_dir, load_merges=True, n_vocab=size)
    special.add_special_token.update(added_specials(tokenizer))
    if not special.merges:
        # gguf drops empty arrays, and without merges transformers rebuilds them from scores: equal
        # scores give back the (empty) merge list of a bytes-only vocabulary
        writer.add_token_scores([0.0] * size)
    special.add_to_gguf(writer, quiet=True)


def write_gguf(hf_dir: Path, path: Path, dtype: str = "f16", name: str | None = None) -> Path:
    """The model directory `hf_dir` (merged, llama) as one GGUF file at `path`."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _write_architecture(writer, model.config, name or Path(hf_dir).name, dtype)
    _write_tokenizer(writer, Path(hf_dir), model.config.vocab_size)
    for tensor_name, array in gguf_tensors(model.state_dict(), model.config):
        kind = tensor_type(array, dtype)
        writer.add_tensor(tensor_name, gguf.quants.quantize(array, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _load_gguf(gguf_path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(gguf_path)
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def logit_gap(gguf_path: Path, hf_dir: Path, prompts: list[str]) -> tuple[float, float]:
    """(largest |logit difference|, largest |logit|) between the GGUF loaded back and `hf_dir`, over
    every position of every prompt, both fed the same token ids from `hf_dir`'s tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    reference = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    loaded = _load_gguf(gguf_path)
    gap = scale = 0.0
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            expected = reference(ids).logits
            gap = max(gap, (loaded(ids).logits - expected).abs().max().item())
            scale = max(scale, expected.abs().max().item())
    return gap, scale


def check_gguf(gguf_path: Path, hf_dir: Path, prompts: list[str]) -> float:
    """Largest absolute logit difference between the GGUF, loaded by transformers, and `hf_dir`."""
    return logit_gap(gguf_path, hf_dir, prompts)[0]


def tokenizer_agrees(gguf_path: Path, hf_dir: Path, prompts: list[str]) -> bool:
    """Whether the tokenizer rebuilt from the GGUF has the chat template and gives the same ids."""
    from transformers import AutoTokenizer

    path = Path(gguf_path)
    ours = AutoTokenizer.from_pretrained(hf_dir)
    theirs = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return ours.chat_template == theirs.chat_template and all(
        ours(p).input_ids == theirs(p).input_ids for p in prompts)


def check_prompts(hf_dir: Path) -> list[str]:
    """CHECK_PROMPTS as the model sees them in use: inside its chat template, special tokens included."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    if not tokenizer.chat_template:
        return list(CHECK_PROMPTS)
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True) for p in CHECK_PROMPTS]


def measure(gguf_path: Path, hf_dir: Path, dtype: str) -> dict:
    """What export.json records of the check, and whether it passed."""
    prompts = check_prompts(hf_dir)
    gap, scale = logit_gap(gguf_path, hf_dir, prompts)
    record = {"dtype": dtype, "max_abs_logit_diff": gap, "max_abs_logit": scale,
              "tolerance": TOLERANCE[dtype] * scale, "tokenizer_matches": tokenizer_agrees(gguf_path, hf_dir, prompts)}
    return record | {"passed": gap <= record["tolerance"] and record["tokenizer_matches"]}


def export_gguf(hf_dir: Path, path: Path, dtype: str = "f16", name: str | None = None) -> tuple[Path, dict]:
    """Write, load back, compare, and only then rename into place: (path, what the check measured)."""
    fd, tmp = temp_file(path.parent, f".{path.stem}.", ".gguf")
    os.close(fd)
    try:
        write_gguf(hf_dir, Path(tmp), dtype, name)
        record = measure(Path(tmp), hf_dir, dtype)
        if not record["passed"]:
            raise ExportError(f"{path}: the GGUF loaded back by transformers does not match {hf_dir}: {record}")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path, record
