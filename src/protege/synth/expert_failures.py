"""Learning from expert failures (EEF; Lan et al., 2025, "Exploring Expert Failures Improves LLM Agent
Tuning"): an expert's failed episode often took good steps before it went wrong. From each failed
episode of the teacher, the states it reached by good steps are restored and the teacher acts on from
there; the continuations that succeed become training episodes, and the steps that failed stay out of
the loss, so only the useful part of the failure is learned.

- Failures: the data's own teacher episodes that failed (those the success curation would drop), and
  `samples` more episodes per request acted by the teacher at `temperature` (each draw its own cache
  key by its sample index), of which the failed ones are kept.
- Useful states: the episode up to the end of a turn whose tool calls all returned without an error.
  The deepest `prefixes` of each failure are continued (its final answer, where the failure went
  wrong or gave up, is never part of one).
- Continuing: a fresh environment, the prefix's tool calls run again to restore its state
  (agents/continuation.py; a prefix whose results do not replay the same is dropped), then the
  teacher at `temperature` with a sample index no earlier episode used, so it does not repeat the
  cached turn that led to the failure. It may take the turns the prefix left of tools.max_turns.
- Kept: a continuation the task's judge (verifier, or metric against a seed's reference) says
  succeeded. It carries meta.alternative (another episode of a request the data holds), meta.prefix_turns
  and meta.explored (the failed record's id, or "sampled"); every assistant turn in it whose tool call
  came back as an error is marked train: false. Requests the judge cannot tell success on (no
  reference, no verifier) are dropped, said in methods.json as every other drop is.

Every teacher request (the sampled episodes, the continuations) counts against the synthesis budget;
an episode is only started while the budget affords all the turns it may take."""

from __future__ import annotations

import json
import random
from typing import Literal

from pydantic import Field

from ..agents.continuation import continue_episodes
from ..agents.episodes import Episode, run_episodes, teacher_policy
from ..agents.tools import is_failure
from ..records import record_input
from ..registry import SYNTH
from .registry import AgentStep, AgentSynth, SynthContext
from .trajectories import (assistant_turns, episode_history, episode_record, failed_turns, scored, untrained,
                           within_budget)


class ExpertFailuresStep(AgentStep):
    name: Literal["expert-failures"] = Field("expert-failures", description="Learning from expert failures "
                                             "(EEF), agent tasks: the teacher continues its failed episodes from "
                                             "the useful states they reached; continuations that succeed are "
                                             "kept, failed steps out of the loss.")
    items: int = Field(50, ge=0, description="Requests of the data so far drawn at random to explore. 0: all.")
    samples: int = Field(2, ge=0, description="Episodes the teacher acts per request at temperature to find "
                         "failures, besides the failed episodes the data already holds.")
    prefixes: int = Field(2, ge=1, description="Useful states continued per failed episode, the deepest first: "
                          "the episode up to a turn whose tool calls all returned without an error.")
    continuations: int = Field(1, ge=1, description="Teacher continuations sampled from each state.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of the explored episodes and "
                               "the continuations.")


@SYNTH.register(ExpertFailuresStep)
def run(records: list[dict], step: ExpertFailuresStep, ctx: SynthContext) -> list[dict]:
    agent = ctx.need_agent(step.name)
    requests = episode_requests(records, step.items, ctx.step_seed)
    failures = [(r["id"], episode_history(r)) for r in records
                if r.get("tools") and r["meta"].get("success") is False and record_input(r) in requests]
    failures += [("sampled", episode.messages) for episode in sampled_failures(requests, step, ctx, agent)]
    chosen = states(failures, step.prefixes, agent, ctx)
    made = []
    for j in range(step.continuations):
        made += continued(chosen, step.samples + 1 + j, step, ctx, agent)
    return records + made


def episode_requests(records: list[dict], count: int, seed: int) -> list[str]:
    """Up to `count` distinct requests of the data's episodes (0: all), drawn at random."""
    requests = list(dict.fromkeys(record_input(r) for r in records if r.get("tools")))
    return random.Random(seed).sample(requests, count) if 0 < count < len(requests) else requests


def sampled_failures(requests: list[str], step: ExpertFailuresStep, ctx: SynthContext,
                     agent: AgentSynth) -> list[Episode]:
    """The teacher's episodes at temperature, draw by draw, the failed ones kept (the others counted)."""
    failures = []
    for sample in range(1, step.samples + 1):
        affordable = requests[:ctx.left() // agent.max_turns]
        ctx.drop("budget", len(requests) - len(affordable))
        policy = teacher_policy(ctx.teacher, ctx.instruction, agent.schemas, sample, step.temperature)
        for episode in run_episodes(agent.environment, affordable, policy, agent.max_turns, scored(agent.judge)):
            reason = {1.0: "sampled episode succeeded", -1.0: "success unknown"}.get(episode.score)
            if reason:
                ctx.drop(reason)
            else:
                failures.append(episode)
    return failures


def states(failures: list[tuple[str, list[dict]]], per_failure: int, agent: AgentSynth,
           ctx: SynthContext) -> list[tuple[str, list[dict]]]:
    """(failed record's id, prefix) of each failure's deepest useful states, each state once."""
    chosen: dict[str, tuple[str, list[dict]]] = {}
    for origin, messages in failures:
        prefixes = useful_prefixes(messages)
        ctx.drop("failure without a useful state", not prefixes)
        for prefix in prefixes[:per_failure]:
            if assistant_turns(prefix) >= agent.max_turns:
                ctx.drop("no turns left")
                continue
            chosen.setdefault(json.dumps(prefix, sort_keys=True), (origin, prefix))
    return list(chosen.values())


def useful_prefixes(messages: list[dict]) -> list[list[dict]]:
    """The episode up to the end of each turn whose tool calls all came back without an error, deepest first."""
    prefixes = []
    for i, message in enumerate(messages):
        calls = len(message.get("tool_calls") or []) if message["role"] == "assistant" else 0
        results = messages[i + 1:i + 1 + calls]
        if calls and len(results) == calls and not any(is_failure(r.get("content") or "") for r in results):
            prefixes.append(messages[:i + 1 + calls])
    return prefixes[::-1]


def continued(states: list[tuple[str, list[dict]]], sample: int, step: ExpertFailuresStep, ctx: SynthContext,
              agent: AgentSynth) -> list[dict]:
    """The teacher's continuation of each state the budget affords; the successful ones as records."""
    affordable = states[:within_budget([prefix for _, prefix in states], agent.max_turns, ctx.left())]
    ctx.drop("budget", len(states) - len(affordable))
    policy = teacher_policy(ctx.teacher, ctx.instruction, agent.schemas, sample, step.temperature)
    episodes = continue_episodes(agent.environment, [prefix for _, prefix in affordable], policy, agent.max_turns,
                                 scored(agent.judge))
    made = []
    for (origin, prefix), episode in zip(affordable, episodes):
        reason = ("state not restored" if episode is None else
                  {0.0: "continuation failed", -1.0: "success unknown"}.get(episode.score))
        if reason:
            ctx.drop(reason)
        else:
            made.append(explored_record(episode, origin, assistant_turns(prefix), sample, step, ctx, agent))
    return made


def explored_record(episode: Episode, origin: str, prefix_turns: int, sample: int, step: ExpertFailuresStep,
                    ctx: SynthContext, agent: AgentSynth) -> dict:
    record = episode_record(ctx.instruction, agent.schemas, episode, step.name, ctx.round)
    record["meta"].update(alternative=True, explored=origin, prefix_turns=prefix_turns, sample=sample)
    return untrained(record, failed_turns(record["messages"]))
