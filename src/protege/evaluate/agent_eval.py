"""Agent evaluation: every held-out request acted on in a fresh environment, all live episodes a
turn at a time. An episode succeeds when the task's verifier says so (it sees the messages, the tool
calls and the environment's final state), or else when its final answer scores 1 by the task's metric
against the reference. Reported: success rate with its bootstrap interval, the share of assistant
turns whose tool calls parsed and matched their schemas, the share of tool calls that ended in an
error, and the mean number of turns."""

from __future__ import annotations

from typing import Callable

from ..agents.environment import Environment
from ..agents.episodes import Episode, Policy, Verifier, run_episodes, verified
from ..config import EvalConfig, Example, MetricConfig
from .metrics import score
from .task_eval import summarize


def episode_scorer(items: list[Example], metric: MetricConfig, verifier: Verifier | None,
                   where: str = "tools.verifier") -> Callable[[Episode], float]:
    references = {item.input: item.output for item in items}

    def success(episode: Episode) -> float:
        if verifier is not None:
            return float(verified(verifier, episode, where))
        return score(metric, episode.answer, references[episode.request])[0] if episode.finished else 0.0
    return success


def episode_record(index: int, item: Example, episode: Episode) -> dict:
    return {"id": index, "input": item.input, "reference": item.output, "prediction": episode.answer,
            "score": episode.score, "details": episode.summary(), "messages": episode.messages}


def agent_summary(records: list[dict], metric: MetricConfig, cfg: EvalConfig) -> dict:
    """The task summary (success rate as accuracy, with its interval) and the agent's own rates."""
    details = [r["details"] for r in records]
    turns, calls = sum(d["turns"] for d in details), sum(d["calls"] for d in details)
    return summarize(records, metric, cfg) | {
        "success_rate": sum(r["score"] for r in records) / max(1, len(records)),
        "valid_call_rate": 1 - sum(d["invalid_turns"] for d in details) / max(1, turns),
        "tool_error_rate": sum(d["tool_errors"] for d in details) / max(1, calls),
        "mean_turns": turns / max(1, len(records)), "tool_calls": calls}


def evaluate_episodes(environment: Environment, items: list[Example], policy: Policy, max_turns: int,
                      metric: MetricConfig, cfg: EvalConfig, verifier: Verifier | None = None) -> tuple[list, dict]:
    """One episode per item, scored; (records, summary) as evaluate_model gives for single turns."""
    episodes = run_episodes(environment, [item.input for item in items], policy, max_turns,
                            episode_scorer(items, metric, verifier))
    records = [episode_record(i, item, episode) for i, (item, episode) in enumerate(zip(items, episodes))]
    return records, agent_summary(records, metric, cfg)
