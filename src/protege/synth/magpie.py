"""Magpie (Xu et al. 2024): an aligned model given only its chat template up to the user turn (the
"pre-query template") writes a user turn, because that is what it was trained to see there. The
writer is a local Hugging Face model, the base student unless step.model names another (an API
teacher cannot be asked for it: chat endpoints always close the user turn). With step.system the
task's instruction is the template's system message, so the user turns are inputs to the task (the
paper's way to steer Magpie to a domain). The task's teacher then answers them, or the writer does
(answer_by: writer, as in the paper). A user turn the writer did not end within max_new_tokens is
dropped, as are empty ones, repeats and test inputs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config import Strict
from ..records import task_chat
from ..registry import SYNTH
from ..records import sft_record


class MagpieStep(Strict):
    name: Literal["magpie"] = Field("magpie", description="Magpie: a local model given only its chat template "
                                    "up to the user turn writes user turns; they are then answered.")
    n: int = Field(50, ge=0, description="User turns sampled (unfinished and repeated ones are dropped).")
    model: str = Field("", description="Who writes the user turns: a local Hugging Face directory, "
                       "embedded:NAME or tiny:SEED; empty: the base student.")
    system: bool = Field(True, description="Put the task's instruction in the template as the system message, "
                         "so the user turns are inputs to the task.")
    answer_by: Literal["teacher", "writer"] = Field("teacher", description="teacher: the task's teacher answers "
                                                    "each user turn; writer: the model that wrote it (as in the "
                                                    "paper).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the user turns.")
    max_new_tokens: int = Field(128, gt=0, description="Longest user turn; one not finished by then is dropped.")

MARK = "\u2063MAGPIE\u2063"  # stands for the user's text while the template is rendered


def pre_query(tokenizer, instruction: str = "") -> str:
    """The chat template rendered up to where the user's text would begin."""
    chat = ([{"role": "system", "content": instruction}] if instruction else []) + [{"role": "user", "content": MARK}]
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    return text[:text.index(MARK)]


def end_ids(model, tokenizer) -> set[int]:
    """The token ids that end a turn: the tokenizer's eos and the model's generation eos."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def finished_turn(tokenizer, ids: list[int], ends: set[int]) -> str | None:
    """The text before the first end-of-turn token; None when the turn never ended."""
    cut = next((i for i, t in enumerate(ids) if t in ends), None)
    return None if cut is None else tokenizer.decode(ids[:cut], skip_special_tokens=True).strip()


def write_user_turns(model, tokenizer, prefix: str, n: int, temperature: float, max_new_tokens: int,
                     seed: int, batch_size: int = 16) -> list[str | None]:
    """n sampled continuations of the pre-query template, each cut at its end of turn (None: unfinished)."""
    import torch  # here, not at the top: importing protege loads every method file
    with torch.inference_mode():
        return sampled_turns(model, tokenizer, prefix, n, temperature, max_new_tokens, seed, batch_size)


def sampled_turns(model, tokenizer, prefix: str, n: int, temperature: float, max_new_tokens: int,
                  seed: int, batch_size: int) -> list[str | None]:
    import torch
    ids = tokenizer(prefix, add_special_tokens=False, return_tensors="pt").input_ids.to(model.device)
    ends, turns = end_ids(model, tokenizer), []
    torch.manual_seed(seed)
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        out = model.generate(input_ids=ids.repeat(rows, 1), attention_mask=torch.ones_like(ids).repeat(rows, 1),
                             do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=sorted(ends))
        turns += [finished_turn(tokenizer, row.tolist(), ends) for row in out[:, ids.shape[1]:]]
    return turns


def writer(step, ctx) -> tuple:
    """(model, tokenizer, name) of the model that writes the user turns."""
    if not step.model:
        return (*ctx.need_student(step.name), "student")
    from ..models import load_model, model_dir
    return (*load_model(model_dir(step.model, ctx.task_dir), ctx.device), step.model)


def answers(step, ctx, model, tokenizer, turns: list[str]) -> list[str | None]:
    if step.answer_by == "writer":
        from ..models.generate import generate
        chats = [task_chat(ctx.instruction, turn) for turn in turns]
        return generate(model, tokenizer, chats, step.max_new_tokens, seed=ctx.step_seed, desc="magpie answers")
    from ..teachers import TeacherRequest
    return ctx.teacher.complete([TeacherRequest("answer", ctx.instruction, input=turn) for turn in turns])


@SYNTH.register(MagpieStep)
def run(records: list[dict], step: MagpieStep, ctx) -> list[dict]:
    from .registry import novel
    from ..records import record_input
    model, tokenizer, name = writer(step, ctx)
    n = step.n if step.answer_by == "writer" else min(step.n, ctx.left())
    prefix = pre_query(tokenizer, ctx.instruction if step.system else "")
    written = write_user_turns(model, tokenizer, prefix, n, step.temperature, step.max_new_tokens, ctx.step_seed)
    ctx.drop("unfinished", sum(t is None for t in written))
    turns = novel([t for t in written if t is not None], ctx, known=[record_input(r) for r in records])
    made = []
    for turn, answer in zip(turns, answers(step, ctx, model, tokenizer, turns)):
        if answer and answer.strip():
            made.append(sft_record(ctx.instruction, turn, answer.strip(), step.name, ctx.round, writer=name,
                                   answered_by=step.answer_by))
        else:
            ctx.drop("unanswered")
    return records + made
