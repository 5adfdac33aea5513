"""Refinement tuning (AgentRefine; Fu et al., 2025): episodes in which a tool call goes wrong, the
environment's error comes back, and the agent corrects itself. Trained on with the loss on the
correct turns only, they teach a student to read an error and recover instead of repeating it.

Who makes the mistake: the teacher, as in the paper (where the strong model writes the whole
trajectory, its erroneous steps included), not the base student. One call of a successful teacher
episode is broken in a way drawn by a seed (a misspelt tool name, a required argument left out, an
argument of the wrong JSON type), the episode up to that call is restored in a fresh environment and
the broken call runs there, so the error the teacher reads is the tools' real one; then the teacher
acts on. The student's own failed calls would need a loaded model and a generation per turn, and
most of a small base student's failures are text that does not parse as a call at all, which has no
tool error to recover from.

Kept: an episode the task's judge says succeeded; the broken turn is marked train: false (SFT leaves
it out of the loss), and meta says which mistake (meta.mistake), in which turn (meta.broken_turn),
and which record it refines (meta.refined; it is another episode of that request, meta.alternative).
Dropped, with the reason in methods.json: a broken call the tools accepted anyway, a state the tools
did not replay the same, a continuation that failed or whose success nothing can tell."""

from __future__ import annotations

import json
import random
from typing import Literal

from pydantic import Field

from ..agents.continuation import continue_episodes
from ..agents.episodes import Episode, teacher_policy
from ..agents.tools import is_failure
from ..registry import SYNTH
from .registry import AgentStep, AgentSynth, SynthContext
from .trajectories import episode_history, episode_record, scored, untrained, within_budget

Mistake = Literal["unknown-tool", "missing-argument", "wrong-type"]
MISTAKES: list[Mistake] = ["unknown-tool", "missing-argument", "wrong-type"]


class AgentRefineStep(AgentStep):
    name: Literal["agent-refine"] = Field("agent-refine", description="Refinement tuning (AgentRefine), agent "
                                          "tasks: a call of a successful teacher episode is broken, the tool's "
                                          "error comes back, the teacher corrects itself; kept when the episode "
                                          "succeeds, the broken turn out of the loss.")
    items: int = Field(50, ge=0, description="Successful episodes of the data so far drawn at random, one "
                       "broken call each. 0: all.")
    mistakes: list[Mistake] = Field(default_factory=lambda: list(MISTAKES), min_length=1, description="Ways a "
                                    "call is broken, one drawn per episode among those its call allows: "
                                    "unknown-tool (a misspelt tool name), missing-argument (a required argument "
                                    "left out), wrong-type (an argument given a value of another JSON type).")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature of the teacher's turns after the "
                               "error.")


@SYNTH.register(AgentRefineStep)
def run(records: list[dict], step: AgentRefineStep, ctx: SynthContext) -> list[dict]:
    agent = ctx.need_agent(step.name)
    broken = []
    for record in successful_episodes(records, step.items, ctx.step_seed):
        rng = random.Random(f"{ctx.step_seed}:{record['id']}")
        made = broken_episode(episode_history(record), step.mistakes, agent.schemas, rng)
        if made is None:
            ctx.drop("no call to break")
        else:
            broken.append((record["id"], *made))
    affordable = broken[:within_budget([prefix for _, prefix, _, _ in broken], agent.max_turns, ctx.left())]
    ctx.drop("budget", len(broken) - len(affordable))
    return records + refined(affordable, step, ctx, agent)


def successful_episodes(records: list[dict], count: int, seed: int) -> list[dict]:
    """Up to `count` (0: all) episodes that succeeded and called a tool, drawn at random."""
    episodes = [r for r in records if r.get("tools") and r["meta"].get("success") is True
                and any(m.get("tool_calls") for m in r["messages"])]
    return random.Random(seed).sample(episodes, count) if 0 < count < len(episodes) else episodes


def broken_episode(history: list[dict], mistakes: list[Mistake], tools: list[dict],
                   rng: random.Random) -> tuple[list[dict], Mistake, int] | None:
    """(the episode up to a broken call, ending with the turn that makes it; the mistake; the call's place
    in that turn), the turn, call and mistake drawn by rng; None when no call allows any of the mistakes."""
    # whether a call allows a mistake does not depend on the draw: any generator tells
    options = [(i, k, mistake) for i, m in enumerate(history) if m["role"] == "assistant"
               for k, call in enumerate(m.get("tool_calls") or [])
               for mistake in mistakes if broken_call(call, mistake, tools, random.Random(0)) is not None]
    if not options:
        return None
    turn, place, mistake = rng.choice(options)
    message = history[turn]
    calls = list(message["tool_calls"])
    calls[place] = broken_call(calls[place], mistake, tools, rng)
    return [*history[:turn], {**message, "tool_calls": calls}], mistake, place


def broken_call(call: dict, mistake: Mistake, tools: list[dict], rng: random.Random) -> dict | None:
    """The call with the mistake made in it; None when the call has nothing to make it with."""
    function = call["function"]
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except json.JSONDecodeError:
        return None
    if not isinstance(arguments, dict):
        return None
    if mistake == "unknown-tool":
        return with_function(call, name=misspelt(function["name"], {t["function"]["name"] for t in tools}))
    if mistake == "missing-argument":
        required = sorted(set(required_arguments(function["name"], tools)) & set(arguments))
        if not required:
            return None
        dropped = rng.choice(required)
        return with_function(call, arguments={k: v for k, v in arguments.items() if k != dropped})
    typed = sorted(k for k, v in arguments.items() if v is not None)
    if not typed:
        return None
    key = rng.choice(typed)
    return with_function(call, arguments={**arguments, key: other_type(arguments[key])})


def with_function(call: dict, name: str | None = None, arguments: dict | None = None) -> dict:
    function = dict(call["function"])
    if name is not None:
        function["name"] = name
    if arguments is not None:
        function["arguments"] = json.dumps(arguments, ensure_ascii=False)
    return {**call, "function": function}


def misspelt(name: str, known: set[str]) -> str:
    """A name a model might write for `name` that no tool has: an underscore dropped, or a plural."""
    wrong = name.replace("_", "", 1) if "_" in name else name + "s"
    while wrong in known:
        wrong += "s"
    return wrong


def required_arguments(name: str, tools: list[dict]) -> list[str]:
    schema = next((t["function"] for t in tools if t["function"]["name"] == name), {})
    return list(schema.get("parameters", {}).get("required", []))


def other_type(value):
    """A value of another JSON type that no lenient parse turns back into the original's type: a string
    becomes a list holding it, a number or a bool a word, a list or an object a string."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (bool, int, float)):
        return "unknown"
    return json.dumps(value, ensure_ascii=False)


def refined(broken: list[tuple], step: AgentRefineStep, ctx: SynthContext, agent: AgentSynth) -> list[dict]:
    """Each broken episode run on by the teacher; the ones whose call failed and that then succeeded."""
    policy = teacher_policy(ctx.teacher, ctx.instruction, agent.schemas, 0, step.temperature)
    prefixes = [prefix for _, prefix, _, _ in broken]
    episodes = continue_episodes(agent.environment, prefixes, policy, agent.max_turns, scored(agent.judge))
    made = []
    for (origin, prefix, mistake, place), episode in zip(broken, episodes):
        reason = why_dropped(episode, len(prefix) + place)
        if reason:
            ctx.drop(reason)
        else:
            made.append(refined_record(episode, origin, mistake, len(prefix) - 1, step, ctx, agent))
    return made


def why_dropped(episode: Episode | None, result_index: int) -> str | None:
    """Why a refined episode is not kept (result_index: the broken call's result); None when it is."""
    if episode is None:
        return "state not restored"
    if not is_failure(episode.messages[result_index].get("content") or ""):
        return "the broken call did not fail"
    return {0.0: "not corrected: the episode failed", -1.0: "success unknown"}.get(episode.score)


def refined_record(episode: Episode, origin: str, mistake: Mistake, turn: int, step: AgentRefineStep,
                   ctx: SynthContext, agent: AgentSynth) -> dict:
    """The episode as a record, its broken turn (`turn`, an index of the episode's messages) untrained."""
    record = episode_record(ctx.instruction, agent.schemas, episode, step.name, ctx.round)
    offset = len(record["messages"]) - len(episode.messages)  # the system message, when there is one
    record["meta"].update(alternative=True, refined=origin, mistake=mistake, broken_turn=turn + offset)
    return untrained(record, [turn + offset])
