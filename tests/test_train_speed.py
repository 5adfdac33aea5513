"""What makes protege's SFT fast, each checked against the slow way it replaces: the loss only at
answer positions (hand-computed numbers, and equal to the model's own loss), attention per packed
example (equal logits and gradients), frozen LoRA base weights stored in bf16 (the same
numbers as bf16 autocast casting them at every use), and LoRA's sum inside one addmm (peft's
numbers)."""

import math

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from protege.models import model_dir
from protege.train.answer_loss import (answer_log_probs, answer_logits, answer_positions, answer_token_loss,
                                       answer_token_stats)
from protege.train.common import frozen_linears_to_bf16, norm_outputs_in_autocast_dtype
from protege.train.fused_lora import fuse_lora_forwards, fused_lora_forward, plain_adapter
from protege.train.packed_attention import (causal_sdpa_per_example, example_bounds, padded_causal_sdpa,
                                            padded_slots, register)

TINY = model_dir("tiny:0")


def test_answer_positions_are_the_ones_whose_next_token_is_a_label():
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 3, -100, -100, 4]])
    rows, positions, targets = answer_positions(labels)
    assert rows.tolist() == [0, 0, 1, 1]
    assert positions.tolist() == [1, 2, 0, 3]  # position t predicts the label at t + 1
    assert targets.tolist() == [7, 8, 3, 4]


def test_answer_token_loss_against_hand_computed_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    targets = torch.tensor([0, 1])
    # -log softmax: row 0 target 0: log(e^2 + 2) - 2; row 1 target 1: log(1 + e + e^3) - 1
    first = math.log(math.exp(2) + 2) - 2
    second = math.log(1 + math.e + math.exp(3)) - 1
    log_probs = answer_log_probs(logits)
    assert answer_token_loss(log_probs, targets, 2).item() == pytest.approx((first + second) / 2, rel=1e-6)
    # under gradient accumulation the sum is divided by the answer tokens of the whole step
    assert answer_token_loss(log_probs, targets, 5).item() == pytest.approx((first + second) / 5, rel=1e-6)
    assert answer_log_probs(logits.bfloat16()).dtype == torch.float32


def test_answer_token_stats_count_top1_and_entropy():
    logits = torch.tensor([[0.0, 0.0], [5.0, 0.0]])
    stats = answer_token_stats(answer_log_probs(logits), torch.tensor([1, 0]))
    # row 0 is a tie: argmax picks token 0, so only row 1 is ranked first
    assert stats["mean_token_accuracy"] == 0.5
    p = 1 / (1 + math.exp(-5))
    row1 = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert stats["entropy"] == pytest.approx((math.log(2) + row1) / 2, rel=1e-5)


@pytest.mark.parametrize("rows", [2, 1])
def test_loss_at_answer_positions_equals_the_models_full_loss(rows):
    """A padded batch of 2 rows, and 1 row as the padding-free collator sends."""
    model = AutoModelForCausalLM.from_pretrained(TINY)
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 17, 18]])[:rows]
    labels = torch.tensor([[-100, -100, -100, 8, 9, -100, 11], [-100, -100, 14, 15, 16, 17, -100]])[:rows]
    outputs, logits, targets = answer_logits(model, {"input_ids": input_ids}, labels)
    ours = answer_token_loss(answer_log_probs(logits), targets, len(targets))
    assert outputs.logits.shape[1] < input_ids.shape[1] - 1  # the projection skipped positions
    assert ours.item() == pytest.approx(model(input_ids=input_ids, labels=labels).loss.item(), rel=1e-5)


def test_example_bounds_split_a_row_where_positions_restart():
    assert example_bounds(torch.tensor([[0, 1, 2, 0, 1, 0]])) == [(0, 3), (3, 5), (5, 6)]
    # the edges TRL's padding-free collator sends (cu_seq_lens_q) are taken as they are
    assert example_bounds(torch.tensor([[0, 1, 2, 0, 1, 0]]), torch.tensor([0, 3, 5, 6])) == [(0, 3), (3, 5), (5, 6)]
    assert example_bounds(torch.tensor([[0, 1, 2, 3]])) is None  # one example: plain causal attention
    assert example_bounds(torch.tensor([[0, 1], [0, 1]])) is None  # a padded batch
    assert example_bounds(None) is None


def packed_inputs(lengths=(5, 3, 7)):
    ids = torch.arange(20, 20 + sum(lengths)).reshape(1, -1)
    positions = torch.cat([torch.arange(n) for n in lengths]).reshape(1, -1)
    return lengths, ids, positions


# (5, 3, 7) runs as one padded batch; (1, 1, 12) would be mostly padding, so it runs per example
@pytest.mark.parametrize("lengths", [(5, 3, 7), (1, 1, 12)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_example_attention_equals_the_block_diagonal_mask(dtype, lengths):
    """The same logits and gradients as transformers' sdpa with its block-diagonal mask (GQA: the
    tiny model has 4 query heads over 2 key/value heads), and each example's logits alone."""
    lengths, ids, positions = packed_inputs(lengths)
    results = {}
    for implementation in ("sdpa", register()):
        model = AutoModelForCausalLM.from_pretrained(TINY, attn_implementation=implementation, dtype=dtype)
        logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        logits.float().square().mean().backward()
        grads = {name: p.grad.float().clone() for name, p in model.named_parameters() if "q_proj" in name}
        results[implementation] = (logits.float().detach(), grads)
    (reference, reference_grads), (ours, our_grads) = results.values()
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    assert torch.allclose(ours, reference, atol=tolerance)
    for name in reference_grads:
        assert torch.allclose(our_grads[name], reference_grads[name], atol=tolerance, rtol=tolerance)
    if dtype == torch.float32:
        model = AutoModelForCausalLM.from_pretrained(TINY, attn_implementation=register())
        with torch.no_grad():
            alone = torch.cat([model(input_ids=part[None]).logits[0]
                               for part in ids[0].split(lengths)])
        assert torch.allclose(ours[0], alone, atol=1e-5)


def test_padded_slots_gather_each_example_and_keep_its_real_tokens():
    gather, keep = padded_slots(((0, 3), (3, 5), (5, 6)), "cpu")
    # 3 examples padded to 3 slots, each padded with its own last token
    assert gather.tolist() == [0, 1, 2, 3, 4, 4, 5, 5, 5]
    assert keep.tolist() == [0, 1, 2, 3, 4, 6]


def test_packed_attention_stays_float32_under_cpu_bf16_autocast():
    """CPU autocast runs sdpa in bf16 whatever its inputs (2-3x slower on the CPU and less exact);
    the packed attention opts out, so under autocast it gives the fp32 numbers."""
    lengths, heads, kv_heads = [5, 3, 7], 4, 2
    query, key, value = (torch.randn(1, n, sum(lengths), 8) for n in (heads, kv_heads, kv_heads))
    bounds = [(0, 5), (5, 8), (8, 15)]
    reference = torch.cat([F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e],
                                                          is_causal=True, enable_gqa=True) for s, e in bounds], 2)
    for attention in (padded_causal_sdpa, causal_sdpa_per_example):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours, _ = attention(query, key, value, bounds, 0.0, None)
        assert ours.dtype == torch.float32
        assert torch.allclose(ours, reference.transpose(1, 2), atol=1e-6)


def test_a_padded_batch_and_generation_take_plain_sdpa():
    model = AutoModelForCausalLM.from_pretrained(TINY, attn_implementation=register()).eval()
    reference = AutoModelForCausalLM.from_pretrained(TINY).eval()
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids, attention_mask=mask).logits,
                              reference(input_ids=ids, attention_mask=mask).logits, atol=1e-6)
    generated = model.generate(input_ids=ids[1:], max_new_tokens=4, do_sample=False)
    assert torch.equal(generated, reference.generate(input_ids=ids[1:], max_new_tokens=4, do_sample=False))


def lora_model():
    model = AutoModelForCausalLM.from_pretrained(TINY)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))


def test_frozen_bf16_base_gives_autocasts_numbers_and_leaves_the_embedding():
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    losses, grads = [], []
    for cast in (False, True):
        torch.manual_seed(0)
        model = lora_model()
        with torch.no_grad():  # LoRA's B starts at zero: give the adapter something to do
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        if cast:
            assert frozen_linears_to_bf16(model) == 2 * 7 + 1  # q k v o gate up down in 2 layers, the output head
            assert not any(getattr(m, "cast_input_dtype_enabled", True) for m in model.modules() if hasattr(m, "lora_A"))
            assert model.get_input_embeddings().weight.dtype == torch.float32  # the lookup is untouched
            assert model.get_output_embeddings().weight.dtype == torch.bfloat16  # its own copy, untied
            assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.item())
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    assert losses[0] == losses[1]
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def lora_pair(rank_scale: float = 0.1):
    """Two copies of one random LoRA model (B non-zero), the second with the fused forward."""
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = lora_model()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, rank_scale)
        models.append(model)
    assert fuse_lora_forwards(models[1]) == 2 * 7
    return models


def loss_and_grads(model, autocast: bool = False):
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def test_fused_lora_gives_peft_numbers_in_fp32():
    peft_model, fused = lora_pair()
    peft_loss, peft_grads = loss_and_grads(peft_model)
    fused_loss, fused_grads = loss_and_grads(fused)
    assert fused_loss == pytest.approx(peft_loss, rel=1e-6)
    assert peft_grads.keys() == fused_grads.keys() and len(peft_grads) == 2 * 2 * 7
    for name, grad in peft_grads.items():
        assert torch.allclose(fused_grads[name], grad, rtol=1e-4, atol=1e-6), name


def test_fused_lora_under_bf16_autocast_with_bf16_base_weights():
    peft_model, fused = lora_pair()
    for model in (peft_model, fused):
        frozen_linears_to_bf16(model)
    peft_loss, peft_grads = loss_and_grads(peft_model, autocast=True)
    fused_loss, fused_grads = loss_and_grads(fused, autocast=True)
    # addmm rounds the sum once where peft rounds the product, the scaled product and the sum
    assert fused_loss == pytest.approx(peft_loss, rel=1e-2)
    for name, grad in peft_grads.items():
        assert torch.allclose(fused_grads[name], grad, rtol=0.05, atol=0.05 * grad.abs().max().item()), name


def test_fused_lora_leaves_everything_but_the_plain_sum_to_peft():
    _, fused = lora_pair()
    layer = fused.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(1, 3, layer.in_features)
    assert plain_adapter(layer, x, (), {}) == "default"
    assert plain_adapter(layer, x, (), {"adapter_names": ["default"]}) is None
    with fused.disable_adapter():  # DPO's reference model: the base alone
        assert plain_adapter(layer, x, (), {}) is None
        ids = torch.tensor([[5, 6, 7]])
        with torch.no_grad():
            base = AutoModelForCausalLM.from_pretrained(TINY)(input_ids=ids).logits
            assert torch.equal(fused(input_ids=ids).logits, base)
    layer.lora_dropout["default"] = torch.nn.Dropout(0.5)
    assert plain_adapter(layer, x, (), {}) is None
    layer.to(torch.float64)  # weights of one dtype other than x's float32, no autocast: peft casts
    layer.lora_dropout["default"] = torch.nn.Identity()
    layer.base_layer.to(torch.float32)
    assert plain_adapter(layer, x, (), {}) is None
    assert fused_lora_forward(layer, x).dtype == torch.float32


def test_sft_trainer_gets_the_fused_lora_forward(tmp_path):
    from protege.config import TrainConfig
    from protege.records import sft_record
    from protege.train.sft import build_sft_trainer

    records = [sft_record("Convert.", "March 1, 2020", "2020-03-01", "seed", 0)]
    trainer, _, _ = build_sft_trainer(TINY, records, TrainConfig(report_to=["none"]), tmp_path)
    layers = [m for m in trainer.model.modules() if hasattr(m, "lora_A")]
    assert layers and all(m.forward.__func__ is fused_lora_forward for m in layers)


def test_norm_outputs_cast_once_give_the_same_forward_and_close_gradients():
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    results = []
    for hooked in (False, True):
        model, _ = lora_pair()
        frozen_linears_to_bf16(model)
        if hooked:
            assert norm_outputs_in_autocast_dtype(model) == 2 * 2  # input and post-attention norm, 2 layers
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits
        logits.float().square().mean().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        with torch.no_grad():  # outside autocast the norms give fp32 as before
            assert model.get_decoder().layers[0].input_layernorm(torch.randn(1, 2, 64)).dtype == torch.float32
        results.append((logits, grads))
    (plain_logits, plain_grads), (hooked_logits, hooked_grads) = results
    assert torch.equal(plain_logits, hooked_logits)
    for name, grad in plain_grads.items():  # the 10 consumers' gradients summed in bf16
        assert torch.allclose(hooked_grads[name], grad, rtol=0.05, atol=0.02 * grad.abs().max().item()), name
    assert any(not torch.equal(hooked_grads[n], g) for n, g in plain_grads.items())  # the hook did run


def test_norm_hook_only_in_pre_norm_families():
    model, _ = lora_pair()
    model.config.model_type = "gemma2"  # its post_attention_layernorm feeds the residual stream
    assert norm_outputs_in_autocast_dtype(model) == 0


def test_answer_logits_past_the_budget_go_to_trls_fused_loss(tmp_path, monkeypatch):
    """A batch whose answer logits would pass logits_budget_bytes takes TRL's own (tiled) loss, and
    both ways give the same loss on the same batch."""
    from trl import SFTTrainer

    from protege.config import TrainConfig
    from protege.records import sft_record
    from protege.train.sft import build_sft_trainer

    records = [sft_record("Convert.", f"March {i}, 2020", f"2020-03-{i:02d}", "seed", 0) for i in range(1, 5)]
    trainer, _, _ = build_sft_trainer(TINY, records, TrainConfig(report_to=["none"]), tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    calls = []
    fused = SFTTrainer.compute_loss
    monkeypatch.setattr(SFTTrainer, "compute_loss", lambda *args, **kw: calls.append(1) or fused(*args, **kw))

    def loss():  # as the Trainer runs it: under bf16 autocast where the CPU has AMX
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=trainer.args.bf16):
            return trainer.compute_loss(trainer.model, dict(batch))
    ours = loss()
    assert not calls
    trainer.logits_budget_bytes = trainer.answer_logit_bytes(batch["labels"]) - 1
    theirs = loss()
    assert calls and theirs.item() == pytest.approx(ours.item(), rel=1e-4)
