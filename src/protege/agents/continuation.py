"""Episodes continued from a prefix: the state an earlier episode reached, restored in a fresh
environment, and acted on from there.

An environment cannot be copied mid-episode (a class instance, a database, whatever the tools touched),
so the state is restored the one way that works for every task: a fresh toolbox, and the prefix's tool
calls run again in order. The tools must then give the results the prefix holds; where one does not
(a tool that reads the clock or a random number), the state is not the prefix's and the episode is not
continued. A prefix may end with an assistant turn whose calls have no results yet: they run during
the restore, and their results (an error included) are what the policy reads next.

The synthesis methods that learn from a teacher's mistakes (synth/expert_failures.py, agent_refine.py)
continue episodes this way."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Callable

from .environment import Environment
from .episodes import Episode, Policy, Step, advance, ended
from .tools import Toolbox


def continue_episodes(environment: Environment, prefixes: list[list[dict]], policy: Policy, max_turns: int,
                      score: Callable[[Episode], float] = lambda episode: 0.0) -> list[Episode | None]:
    """Each prefix (an episode's messages from the user's request on) restored in a fresh toolbox, then
    acted on, all live episodes a turn at a time, until it answers or has taken max_turns turns in all
    (the prefix's included). None where the restore did not reach the prefix's state. `score` sees each
    episode while its environment still holds the final state."""
    with ExitStack() as stack:
        episodes = [restored(prefix, stack.enter_context(environment.episode())) for prefix in prefixes]
        act_on([e for e in episodes if e is not None], policy, max_turns)
        for episode in episodes:
            if episode is not None:
                episode.score = float(score(episode))
                episode.toolbox = None
    return episodes


def restored(prefix: list[dict], toolbox: Toolbox) -> Episode | None:
    """The episode the prefix is, its tool calls run again in `toolbox`; None when a result differs from
    the one the prefix holds, or the prefix is no single request's episode."""
    if not prefix or prefix[0]["role"] != "user" or any(m["role"] not in ("assistant", "tool") for m in prefix[1:]):
        return None
    episode = Episode(prefix[0]["content"], [prefix[0]], toolbox=toolbox)
    for message in prefix[1:]:
        if message["role"] == "assistant":
            if ended(episode):
                return None
            advance(episode, Step(message))
    recorded = [m["content"] for m in prefix if m["role"] == "tool"]
    replayed = [m["content"] for m in episode.messages if m["role"] == "tool"]
    return episode if replayed[:len(recorded)] == recorded else None


def act_on(episodes: list[Episode], policy: Policy, max_turns: int) -> None:
    """Every live episode takes its next turn together, as run_episodes does, each up to max_turns."""
    while True:
        live = [e for e in episodes if not ended(e) and e.turns < max_turns]
        if not live:
            return
        for episode, step in zip(live, policy([e.messages for e in live])):
            advance(episode, step)

