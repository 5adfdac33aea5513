"""Trajectories (AgentTuning, FireAct): the teacher acts in the task's environment on each request,
turn by turn through its tools, and every episode becomes a training record in the OpenAI chat
format with the tools' schemas beside it. Each record says whether the episode succeeded (by the
task's verifier, or its metric against the request's reference answer; unknown where there is
neither), so the success curation step can drop the failures and say why.

The helpers below serve the methods that rework episodes (expert_failures, agent_refine)."""

from __future__ import annotations

from typing import Callable

from ..agents.environment import Environment
from ..agents.episodes import Episode, Verifier, run_episodes, teacher_policy, verified
from ..agents.tools import is_failure
from ..config import Example, MetricConfig
from ..evaluate.metrics import score
from ..runs import digest


def teacher_trajectories(teacher, environment: Environment, instruction: str, requests: list[Example],
                         max_turns: int, source: str, round_: int, metric: MetricConfig,
                         verifier: Verifier | None = None) -> list[dict]:
    """One episode of the teacher per request; a request with an empty output has no reference."""
    policy = teacher_policy(teacher, instruction, environment.schemas)
    judge = success_judge(requests, metric, verifier)
    episodes = run_episodes(environment, [r.input for r in requests], policy, max_turns, scored(judge))
    return [episode_record(instruction, environment.schemas, episode, source, round_) for episode in episodes]


def success_judge(requests: list[Example], metric: MetricConfig,
                  verifier: Verifier | None) -> Callable[[Episode], bool | None]:
    """Whether an episode succeeded; None when nothing can tell (no verifier, no reference)."""
    references = {r.input: r.output for r in requests}

    def succeeded(episode: Episode) -> bool | None:
        if verifier is not None:
            return verified(verifier, episode, "tools.verifier")
        reference = references.get(episode.request, "")
        if not episode.finished:
            return False
        if not reference:
            return None
        return score(metric, episode.answer, reference)[0] >= 1
    return succeeded


def scored(judge: Callable[[Episode], bool | None]) -> Callable[[Episode], float]:
    """The judge as run_episodes' score: 1 succeeded, 0 failed, -1 nothing could tell."""
    def score(episode: Episode) -> float:
        verdict = judge(episode)
        return -1.0 if verdict is None else float(verdict)
    return score


def episode_history(record: dict) -> list[dict]:
    """An episode record's messages from the user's request on, as an episode holds them: without the
    instruction's system message, and without train flags (they are for SFT, not for the teacher)."""
    messages = record["messages"]
    messages = messages[1:] if messages and messages[0]["role"] == "system" else messages
    return [{k: v for k, v in m.items() if k != "train"} for m in messages]


def failed_turns(messages: list[dict]) -> list[int]:
    """Indices of the assistant turns at least one of whose tool calls came back as an error."""
    failed = []
    for i, message in enumerate(messages):
        calls = len(message.get("tool_calls") or []) if message["role"] == "assistant" else 0
        if any(is_failure(m.get("content") or "") for m in messages[i + 1:i + 1 + calls] if m["role"] == "tool"):
            failed.append(i)
    return failed


def assistant_turns(messages: list[dict]) -> int:
    return sum(m["role"] == "assistant" for m in messages)


def within_budget(prefixes: list[list[dict]], max_turns: int, left: int) -> int:
    """How many of the prefixes, in order, the budget affords continuing: each continuation may ask the
    teacher once for every turn the prefix leaves of max_turns."""
    taken = 0
    for prefix in prefixes:
        left -= max(0, max_turns - assistant_turns(prefix))
        if left < 0:
            break
        taken += 1
    return taken


def untrained(record: dict, turns: list[int]) -> dict:
    """The record with the assistant messages at `turns` (indices of record["messages"]) out of the loss:
    SFT learns no turn marked train: false."""
    messages = [{**m, "train": False} if i in turns else m for i, m in enumerate(record["messages"])]
    return {**record, "messages": messages}


def episode_record(instruction: str, tools: list[dict], episode: Episode, source: str, round_: int) -> dict:
    messages = ([{"role": "system", "content": instruction}] if instruction else []) + episode.messages
    success = None if episode.score < 0 else bool(episode.score)
    return {"id": digest([source, round_, messages]), "messages": messages, "tools": tools,
            "meta": {"source": source, "round": round_, "success": success, **episode.summary()}}


def reference_record(instruction: str, tools: list[dict], seed: Example) -> dict:
    """A seed's own trajectory as a training record, trusted as a success: the user wrote it."""
    messages = ([{"role": "system", "content": instruction}] if instruction else []) + seed.messages
    calls = sum(len(m.get("tool_calls") or []) for m in seed.messages)
    turns = sum(m["role"] == "assistant" for m in seed.messages)
    return {"id": digest(["seed", 0, messages]), "messages": messages, "tools": tools,
            "meta": {"source": "seed", "round": 0, "success": True, "reference": True, "turns": turns,
                     "calls": calls, "finished": True}}
