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
from .bootstrap import bootstrap_ci, ratio_ci
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
    """The task summary (success rate as accuracy, with its interval) and the agent's own rates, each
    with its bootstrap interval over episodes: valid turns per turn, tool errors per call, turns."""
    details = [r["details"] for r in records]
    turns, calls = [d["turns"] for d in details], [d["calls"] for d in details]
    valid = [t - d["invalid_turns"] for t, d in zip(turns, details)]
    errors = [d["tool_errors"] for d in details]
    return summarize(records, metric, cfg) | {
        "success_rate": sum(r["score"] for r in records) / max(1, len(records)),
        "valid_call_rate": sum(valid) / max(1, sum(turns)), "valid_call_ci": pooled_ci(valid, turns, cfg),
        "tool_error_rate": sum(errors) / max(1, sum(calls)), "tool_error_ci": pooled_ci(errors, calls, cfg),
        "mean_turns": sum(turns) / max(1, len(records)),
        "mean_turns_ci": list(bootstrap_ci(turns, cfg.confidence, cfg.bootstrap)) if turns else [0.0, 0.0],
        "tool_calls": sum(calls)}


def pooled_ci(parts: list[int], wholes: list[int], cfg: EvalConfig) -> list[float]:
    return list(ratio_ci(parts, wholes, cfg.confidence, cfg.bootstrap)) if parts else [0.0, 0.0]


def evaluate_episodes(environment: Environment, items: list[Example], policy: Policy, max_turns: int,
                      metric: MetricConfig, cfg: EvalConfig, verifier: Verifier | None = None) -> tuple[list, dict]:
    """One episode per item, scored; (records, summary) as evaluate_model gives for single turns."""
    episodes = run_episodes(environment, [item.input for item in items], policy, max_turns,
                            episode_scorer(items, metric, verifier))
    records = [episode_record(i, item, episode) for i, (item, episode) in enumerate(zip(items, episodes))]
    return records, agent_summary(records, metric, cfg)
