"""Trajectories (AgentTuning, FireAct): the teacher acts in the task's environment on each request,
turn by turn through its tools, and every episode becomes a training record in the OpenAI chat
format with the tools' schemas beside it. Each record says whether the episode succeeded (by the
task's verifier, or its metric against the request's reference answer; unknown where there is
neither), so the success curation step can drop the failures and say why."""

from __future__ import annotations

from typing import Callable

from ..agents.environment import Environment
from ..agents.episodes import Episode, Verifier, run_episodes, teacher_policy, verified
from ..config import Example, MetricConfig
from ..evaluate.metrics import score
from ..runs import digest


def teacher_trajectories(teacher, environment: Environment, instruction: str, requests: list[Example],
                         max_turns: int, source: str, round_: int, metric: MetricConfig,
                         verifier: Verifier | None = None) -> list[dict]:
    """One episode of the teacher per request; a request with an empty output has no reference."""
    policy = teacher_policy(teacher, instruction, environment.schemas)
    judge = success_judge(requests, metric, verifier)
    episodes = run_episodes(environment, [r.input for r in requests], policy, max_turns,
                            lambda episode: -1.0 if judge(episode) is None else float(judge(episode)))
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
