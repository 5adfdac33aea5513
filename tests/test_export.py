"""protege export: the merged HF directory, the peft adapter and the GGUF file, each loaded back by
the library its users load it with (plain transformers, peft, transformers' GGUF loader)."""

from __future__ import annotations

import json
import os
import stat

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from protege.config import ConfigError
from protege.export import ExportError, export_model
from protege.export import gguf as gguf_export
from protege.models.tiny import build_tiny, tiny_tokenizer

CHAT = [{"role": "user", "content": "Convert 3 March 2024 to ISO."}]
# what the tiny model's ChatML template makes of CHAT, written out by hand
CHAT_TEXT = "<|im_start|>user\nConvert 3 March 2024 to ISO.<|im_end|>\n<|im_start|>assistant\n"


def logits(model, tokenizer, text: str = CHAT_TEXT) -> torch.Tensor:
    with torch.no_grad():
        return model(tokenizer(text, return_tensors="pt").input_ids).logits[0]


def load(directory):
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def load_gguf(path):
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny") / "student", seed=5)


@pytest.fixture(scope="module")
def lora(tiny, tmp_path_factory):
    """A LoRA on every attention and MLP input projection, B random (not peft's zero start), so the
    adapter changes the logits; saved with its tokenizer, as protege's trainers save one."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"])
    model = get_peft_model(load(tiny), config).eval()
    directory = tmp_path_factory.mktemp("lora") / "adapter"
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory, logits(model, tiny_tokenizer())


# --- pure pieces, against values written out by hand ------------------------------------------------

def test_permute_rows_interleaves_each_heads_halves():
    rows = np.arange(8.0).reshape(8, 1) * np.array([[1.0, -1.0]])
    # two heads of four rows, [a0 a1 b0 b1] -> [a0 b0 a1 b1] within each head
    expected = np.array([0, 2, 1, 3, 4, 6, 5, 7], dtype=float).reshape(8, 1) * np.array([[1.0, -1.0]])
    assert np.array_equal(gguf_export.permute_rows(rows, heads=2), expected)
    # one head of eight rows: the halves are [0 1 2 3] and [4 5 6 7]
    assert gguf_export.permute_rows(np.arange(8.0), heads=1).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_transformers_loader_undoes_the_permutation():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weights = np.random.default_rng(0).normal(size=(2 * 16, 8))  # 2 KV heads of 16 rows
    loader = LlamaTensorProcessor({"num_attention_heads": 4, "num_key_value_heads": 2})
    restored = loader.process(gguf_export.permute_rows(weights, heads=2), "blk.0.attn_k.weight").weights
    assert np.array_equal(restored, weights)


def test_tensor_types_follow_llama_cpp():
    kind = gguf.GGMLQuantizationType
    norm, matrix, odd = np.ones(64), np.ones((8, 64)), np.ones((8, 48))
    assert gguf_export.tensor_type(norm, "f16") == kind.F32
    assert gguf_export.tensor_type(matrix, "f32") == kind.F32
    assert gguf_export.tensor_type(matrix, "f16") == kind.F16
    assert gguf_export.tensor_type(matrix, "q8_0") == kind.Q8_0
    assert gguf_export.tensor_type(odd, "q8_0") == kind.F16  # 48 is not a whole number of 32-blocks
    assert gguf_export.tensor_type(norm, "q8_0") == kind.F32


def test_vocab_marks_special_added_and_padding_tokens():
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(["<think>"])  # added, not special: id 259
    tokens, types = gguf_export.vocab(tokenizer, size=262)
    kind = gguf.TokenType
    assert tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] and types[:3] == [kind.CONTROL] * 3
    assert tokens[3] == "!" and types[3] == kind.NORMAL  # first of the sorted byte alphabet
    assert (tokens[259], types[259]) == ("<think>", kind.USER_DEFINED)
    assert tokens[260:] == ["[PAD260]", "[PAD261]"] and types[260:] == [kind.UNUSED] * 2
    with pytest.raises(ExportError, match="vocab_size 100"):
        gguf_export.vocab(tokenizer, size=100)


def test_added_specials_measured_on_the_tokenizer():
    assert gguf_export.added_specials(tiny_tokenizer()) == {"bos": False, "eos": False}


def test_pre_tokenizer_names():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    # llama.cpp's name: it refuses transformers' "gpt2" ("unknown pre-tokenizer type")
    assert gguf_export.pre_tokenizer_name({"pre_tokenizer": byte_level}) == "gpt-2"
    llama3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    split = {"type": "Split", "pattern": {"Regex": llama3}, "behavior": "Isolated", "invert": False}
    sequence = {"type": "Sequence", "pretokenizers": [split, dict(byte_level, use_regex=False)]}
    assert gguf_export.pre_tokenizer_name({"pre_tokenizer": sequence}) == "llama3"
    digits = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    with pytest.raises(ExportError, match="no llama.cpp name"):
        gguf_export.pre_tokenizer_name({"pre_tokenizer": digits})


# --- exports, loaded back ------------------------------------------------------------------------------

def test_hf_export_loads_with_plain_transformers(tiny, tmp_path):
    written = export_model(tiny, tmp_path / "out", ["hf"])
    assert written == {"hf": tmp_path / "out" / "hf"}
    assert (written["hf"] / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(written["hf"])
    assert tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == CHAT_TEXT
    assert torch.equal(logits(load(written["hf"]), tokenizer), logits(load(tiny), tokenizer))
    record = json.loads((tmp_path / "out" / "export.json").read_text())
    assert record["written"] == {"hf": str(written["hf"])} and "gguf" not in record


def test_lora_exports_merged_adapter_and_gguf(tiny, lora, tmp_path):
    from peft import PeftModel

    adapter, expected = lora
    tokenizer = tiny_tokenizer()
    assert not torch.allclose(expected, logits(load(tiny), tokenizer), atol=1e-3)  # the adapter matters
    out = tmp_path / "out"
    # no base given: adapter_config.json names the tiny model's directory
    written = export_model(adapter, out, ["hf", "adapter", "gguf"], gguf_dtype="f32")
    assert torch.allclose(logits(load(written["hf"]), tokenizer), expected, atol=1e-5)
    assert {p.name for p in written["adapter"].iterdir()} >= {"adapter_config.json", "adapter_model.safetensors",
                                                              "tokenizer.json", "chat_template.jinja"}
    reloaded = PeftModel.from_pretrained(load(tiny), written["adapter"]).eval()
    assert torch.allclose(logits(reloaded, tokenizer), expected, atol=1e-6)
    assert written["gguf"] == out / "model-f32.gguf"
    assert torch.allclose(logits(load_gguf(written["gguf"]), tokenizer), expected, atol=1e-4)
    record = json.loads((out / "export.json").read_text())
    assert record["base"] == str(tiny) and record["gguf"]["max_abs_logit_diff"] <= 1e-4
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no scratch left behind


def test_gguf_f32_round_trip_is_exact_with_tokenizer(tiny, tmp_path):
    path = export_model(tiny, tmp_path, ["gguf"], gguf_dtype="f32", name="iso-dates")["gguf"]
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    assert torch.allclose(logits(load_gguf(path), tokenizer), logits(load(tiny), tokenizer), atol=1e-4)
    assert gguf_export.check_gguf(path, tiny, [CHAT_TEXT, "plain text"]) <= 1e-4
    rebuilt = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    assert rebuilt.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == CHAT_TEXT
    assert rebuilt(CHAT_TEXT).input_ids == tokenizer(CHAT_TEXT).input_ids
    assert rebuilt.eos_token == "<|im_end|>"
    fields = gguf.GGUFReader(path).fields
    assert fields["llama.rope.freq_base"].contents() == 10000.0
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2" and fields["general.name"].contents() == "iso-dates"


def test_gguf_f16_within_rounding_bound(tiny, tmp_path):
    path = export_model(tiny, tmp_path, ["gguf"], gguf_dtype="f16")["gguf"]
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    expected = logits(load(tiny), tokenizer)
    gap = (logits(load_gguf(path), tokenizer) - expected).abs().max().item()
    # Each f16 weight is off by at most 2^-11 of itself. A logit passes through 16 rounded matrices in
    # series (embedding; q, k, v, o, gate, up, down in each of 2 layers; the tied output), and to first
    # order their relative errors add: at most 16 * 2^-11 of the largest logit. Above zero: it is f16.
    assert 0 < gap <= 16 * 2 ** -11 * expected.abs().max().item()
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert "output.weight" not in types  # tied to token_embd


def test_gguf_q8_0_is_quantized_and_checked(tiny, tmp_path):
    path = export_model(tiny, tmp_path, ["gguf"], gguf_dtype="q8_0")["gguf"]
    record = json.loads((tmp_path / "export.json").read_text())["gguf"]
    assert 0 < record["max_abs_logit_diff"] <= gguf_export.TOLERANCE["q8_0"] * record["max_abs_logit"]
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0


def test_gguf_check_catches_a_missing_permutation(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_export, "permute_rows", lambda weights, heads: weights)
    with pytest.raises(ExportError, match="does not match"):
        export_model(tiny, tmp_path, ["gguf"], gguf_dtype="f32")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*"))


def test_untied_output_is_written(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "untied")
    tokenizer.save_pretrained(tmp_path / "untied")
    path = export_model(tmp_path / "untied", tmp_path / "out", ["gguf"], gguf_dtype="f32")["gguf"]
    assert "output.weight" in {t.name for t in gguf.GGUFReader(path).tensors}
    assert gguf_export.check_gguf(path, tmp_path / "untied", [CHAT_TEXT]) <= 1e-4


# --- refusals, before anything is written -----------------------------------------------------------------

def test_non_llama_gguf_is_refused_by_name(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tiny_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "qwen")
    tokenizer.save_pretrained(tmp_path / "qwen")
    with pytest.raises(ExportError, match="model_type 'qwen2'.*llama-family"):
        export_model(tmp_path / "qwen", tmp_path / "out", ["hf", "gguf"])
    assert not (tmp_path / "out" / "hf").exists()


def test_adapter_of_a_full_model_is_refused(tiny, tmp_path):
    with pytest.raises(ExportError, match="not a LoRA adapter"):
        export_model(tiny, tmp_path / "out", ["hf", "adapter"])
    assert not (tmp_path / "out" / "hf").exists()


def test_unknown_format_and_dtype_are_refused(tiny, tmp_path):
    with pytest.raises(ExportError, match="choose from hf, adapter, gguf"):
        export_model(tiny, tmp_path, ["onnx"])
    with pytest.raises(ExportError, match="GGUF dtype 'q4_k'"):
        export_model(tiny, tmp_path, ["gguf"], gguf_dtype="q4_k")
    with pytest.raises(ExportError, match="neither a model directory"):
        export_model(tmp_path / "nowhere", tmp_path / "out", ["hf"])


def test_adapter_whose_base_is_elsewhere_needs_base(lora, tiny, tmp_path):
    import shutil

    adapter = tmp_path / "moved"
    shutil.copytree(lora[0], adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="base_model_name_or_path.*--base"):
        export_model(adapter, tmp_path / "out", ["adapter"])
    written = export_model(adapter, tmp_path / "out", ["adapter"], base=tiny)
    assert (written["adapter"] / "adapter_model.safetensors").is_file()


def test_adapter_missing_a_weight_is_refused(lora, tiny, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    adapter = tmp_path / "partial"
    shutil.copytree(lora[0], adapter)
    weights = load_file(adapter / "adapter_model.safetensors")
    dropped = sorted(weights)[0]
    save_file({k: v for k, v in weights.items() if k != dropped}, adapter / "adapter_model.safetensors")
    with pytest.raises(ExportError, match="1 adapter weights missing"):
        export_model(adapter, tmp_path / "out", ["adapter"], base=tiny)
    assert not (tmp_path / "out" / "adapter").exists()


# --- what is already there: replaced only where protege wrote it ----------------------------------------

def export_cli(capfd, *args) -> tuple[int, str]:
    from protege.cli import main

    code = main(["export", *map(str, args)])
    return code, capfd.readouterr().err.strip()


def one_line(err: str, named) -> None:
    assert "Traceback" not in err and len(err.splitlines()) == 1 and str(named) in err, err


def test_export_refuses_to_replace_what_protege_did_not_write(tiny, tmp_path, capfd):
    out = tmp_path / "out"
    (out / "hf").mkdir(parents=True)
    (out / "hf" / "notes.txt").write_text("mine")
    code, err = export_cli(capfd, tiny, "--out", out)
    assert code == 2
    one_line(err, out / "hf")
    assert (out / "hf" / "notes.txt").read_text() == "mine" and not (out / "export.json").exists()
    (out / "export.json").write_text('{"mine": true}\n')
    code, err = export_cli(capfd, tiny, "--out", out, "--format", "gguf", "--gguf-dtype", "f32")
    assert code == 2
    one_line(err, out / "export.json")
    assert (out / "export.json").read_text() == '{"mine": true}\n' and not list(out.glob("*.gguf"))
    assert export_cli(capfd, tiny, "--out", out, "--overwrite")[0] == 0
    assert not (out / "hf" / "notes.txt").exists() and (out / "hf" / "model.safetensors").is_file()
    assert json.loads((out / "export.json").read_text())["written"] == {"hf": str(out / "hf")}


def test_export_replaces_its_own_earlier_output_until_it_is_changed(tiny, tmp_path):
    out = tmp_path / "out"
    export_model(tiny, out, ["hf"])
    export_model(tiny, out, ["gguf"], gguf_dtype="f32")  # leaves hf as it is, and still knows it
    export_model(tiny, out, ["hf", "gguf"], gguf_dtype="f32")
    (out / "hf" / "config.json").write_text((out / "hf" / "config.json").read_text() + "\n")
    with pytest.raises(ConfigError, match=r"out/hf: exists and is not what protege exported there"):
        export_model(tiny, out, ["hf"])
    export_model(tiny, out, ["gguf"], gguf_dtype="f32")  # what changed is not in the way of this one
    (out / "model-f32.gguf").write_bytes(b"mine")
    with pytest.raises(ConfigError, match=r"model-f32.gguf: exists and is not what protege exported there"):
        export_model(tiny, out, ["gguf"], gguf_dtype="f32")
    assert (out / "model-f32.gguf").read_bytes() == b"mine"


def test_export_to_a_file_is_refused(tiny, tmp_path, capfd):
    target = tmp_path / "model.gguf"
    target.write_bytes(b"mine")
    code, err = export_cli(capfd, tiny, "--out", target)
    assert code == 2
    one_line(err, target)
    assert target.read_bytes() == b"mine"


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_exported_files_and_folders_follow_the_umask(tiny, lora, tmp_path, umask_027):
    out = tmp_path / "out"
    export_model(lora[0], out, ["hf", "adapter", "gguf"], gguf_dtype="f32")
    modes = {path.relative_to(out).as_posix(): stat.S_IMODE(path.stat().st_mode) for path in out.rglob("*")}
    assert modes["export.json"] == modes["model-f32.gguf"] == modes["hf/model.safetensors"] == 0o640
    assert modes["adapter/adapter_model.safetensors"] == 0o640
    assert modes["hf"] == modes["adapter"] == 0o750
    assert {mode for name, mode in modes.items() if (out / name).is_file()} == {0o640}
    assert {mode for name, mode in modes.items() if (out / name).is_dir()} == {0o750}


# --- the embedded student ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_embedded_student_gguf_round_trip(tmp_path):
    from protege.models import model_dir

    student = model_dir("embedded:smollm2-135m-instruct")
    path = export_model(student, tmp_path, ["gguf"], gguf_dtype="f16")["gguf"]
    record = json.loads((tmp_path / "export.json").read_text())["gguf"]
    assert record["tokenizer_matches"] and record["max_abs_logit_diff"] <= record["tolerance"]
    rebuilt = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    original = AutoTokenizer.from_pretrained(student)
    text = original.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert rebuilt.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == text
    assert rebuilt(text).input_ids == original(text).input_ids
    assert len(gguf.GGUFReader(path).fields["tokenizer.ggml.merges"].data) == 48900
