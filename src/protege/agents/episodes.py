"""Episodes: an agent acting in a task's environment until it answers or runs out of turns.

Every live episode of a batch takes its next turn together: the policy is asked once per turn for
all of them (one batched generation for a student, one batch of requests for a teacher), then each
episode's tool calls run in its own toolbox, and their results come back as `tool` messages. A tool
that fails, a bad argument, an unparsable call: each becomes a message or a count, never a crash."""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable

from ..models.chat_format import message_problems
from ..teachers import CachedTeacher, act_request
from .environment import Environment
from .tools import Toolbox, call_tool


@dataclass(frozen=True)
class Step:
    """One assistant turn a policy wrote: the message (None: it gave nothing usable) and whether its
    tool calls parsed and matched their schemas."""

    message: dict | None
    valid: bool = True


Policy = Callable[[list[list[dict]]], list[Step]]  # the episodes so far -> each one's next turn


@dataclass
class Episode:
    request: str
    messages: list[dict]  # OpenAI chat format, from the user's request on (the instruction is not here)
    turns: int = 0  # assistant turns written
    calls: int = 0  # tool calls made
    tool_errors: int = 0  # calls whose result was an error (unknown tool, bad arguments, raised, timeout)
    invalid_turns: int = 0  # turns whose tool calls did not parse or match their schemas
    finished: bool = False  # it ended with an answer (not by running out of turns or a dropped turn)
    score: float = 0.0  # success, from the scorer given to run_episodes
    toolbox: Toolbox | None = field(default=None, repr=False)

    @property
    def answer(self) -> str:
        """The final answer: the last assistant message's text when the episode finished."""
        last = self.messages[-1]
        return (last.get("content") or "") if self.finished and last["role"] == "assistant" else ""

    def summary(self) -> dict:
        return {"turns": self.turns, "calls": self.calls, "tool_errors": self.tool_errors,
                "invalid_turns": self.invalid_turns, "finished": self.finished}


Verifier = Callable[[Episode], bool]


def verified(verifier: Verifier, episode: Episode, where: str) -> bool:
    """The user's verifier's verdict; its exception is the user's error, said with where it came from."""
    try:
        return bool(verifier(episode))
    except Exception as exc:  # noqa: BLE001 (user code: any exception is reported the same way)
        raise ValueError(f"{where} raised {type(exc).__name__}: {exc}") from None


def run_episodes(environment: Environment, requests: list[str], policy: Policy, max_turns: int,
                 score: Callable[[Episode], float] = lambda episode: 0.0) -> list[Episode]:
    """Each request acted on in a fresh toolbox, all live episodes a turn at a time; `score` sees each
    episode while its environment still holds the final state (what a verifier checks)."""
    with ExitStack() as stack:
        episodes = [Episode(text, [{"role": "user", "content": text}],
                            toolbox=stack.enter_context(environment.episode())) for text in requests]
        for _ in range(max_turns):
            live = [e for e in episodes if not ended(e)]
            if not live:
                break
            for episode, step in zip(live, policy([e.messages for e in live])):
                advance(episode, step)
        for episode in episodes:
            episode.score = float(score(episode))
            episode.toolbox = None
    return episodes


def ended(episode: Episode) -> bool:
    """It answered, or its last turn gave nothing (no tool result is waiting for the next turn)."""
    return episode.finished or episode.messages[-1]["role"] == "assistant"


def advance(episode: Episode, step: Step) -> None:
    """Append the turn; run its tool calls, or end the episode when it answers."""
    episode.turns += 1
    if step.message is None:
        episode.messages.append({"role": "assistant", "content": ""})  # gave nothing: the episode fails
        return
    episode.messages.append(step.message)
    episode.invalid_turns += not step.valid
    calls = step.message.get("tool_calls") or []
    if not calls:
        episode.finished = True
        return
    for call in calls:
        result = call_tool(episode.toolbox, call["function"]["name"], call["function"].get("arguments"))
        episode.calls += 1
        episode.tool_errors += result.error
        episode.messages.append({"role": "tool", "tool_call_id": call["id"], "content": result.content})


def teacher_policy(teacher: CachedTeacher, instruction: str, tools: list[dict], sample: int = 0,
                   temperature: float = 0.0) -> Policy:
    """A teacher (function, OpenAI-compatible, local, ...) as a policy: one cached request per live
    episode (`sample` keeps draws at a temperature apart in the cache). Its turns are checked against
    the tools' schemas as the student's are, so that an invalid turn counts the same whoever wrote it."""
    def act(histories: list[list[dict]]) -> list[Step]:
        replies = teacher.complete([act_request(instruction, h, tools, sample, temperature) for h in histories])
        messages = [json.loads(reply) if reply else None for reply in replies]
        return [Step(m, m is None or not message_problems(m, tools)) for m in messages]
    return act


def student_policy(model, tokenizer, instruction: str, tools: list[dict], max_new_tokens: int,
                   batch_size: int = 32) -> Policy:
    """A model as a policy: one batched generation per turn over every live episode, each rendered by
    chat_format for the model's template and its reply parsed back into tool calls (their validity
    counted). The local and self teachers act through the same models.acting."""
    from ..models.acting import act, agent_chat

    def step(histories: list[list[dict]]) -> list[Step]:
        turns = act(model, tokenizer, [agent_chat(instruction, h) for h in histories], tools, max_new_tokens,
                    batch_size)
        return [Step(turn.message, turn.valid) for turn in turns]
    return step
