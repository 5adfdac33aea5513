"""A model in this process acting as an agent: the student in evaluation, and the local and self teachers.
All three take a turn the same way, so a teacher that is a local model sees its episode exactly as the
student will and its turns are read back by the same parser: the episode is rendered for the model's
chat template (chat_format.render_messages; the template is also given the tools where it renders
them), the model generates, and its text is parsed into an OpenAI assistant message whose tool calls
number on from those already in the episode.

torch is imported only by `act` (through generate), so the teachers can import this file when protege
loads."""

from __future__ import annotations

from .chat_format import ParsedTurn, parse_assistant, render_messages, supports_tools


def agent_chat(instruction: str, history: list[dict]) -> list[dict]:
    """The episode as the model is shown it: the instruction as the system message (none when empty,
    so that the template's own default system message stays), then the turns so far."""
    return ([{"role": "system", "content": instruction}] if instruction else []) + history


def act_prompts(episodes: list[list[dict]], tools: list[dict], tokenizer) -> tuple[list[list[dict]], list[dict] | None]:
    """The chats to generate from, and the tools to hand the chat template: the tools themselves where
    the template renders them, None where they are written into the system message instead."""
    chats = [render_messages(episode, tools, tokenizer) for episode in episodes]
    return chats, (tools if supports_tools(tokenizer) else None)


def parsed_turns(texts: list[str], episodes: list[list[dict]], tools: list[dict]) -> list[ParsedTurn]:
    """Each generated text as the episode's next assistant turn, with what was wrong in it."""
    return [parse_assistant(text, tools, calls_so_far(episode)) for text, episode in zip(texts, episodes)]


def calls_so_far(history: list[dict]) -> int:
    """Tool calls already in the episode: the next call's id numbers on from them."""
    return sum(len(m.get("tool_calls") or []) for m in history)


def act(model, tokenizer, episodes: list[list[dict]], tools: list[dict], max_new_tokens: int, batch_size: int = 32,
        temperature: float = 0.0, seed: int = 0, desc: str = "agent turn") -> list[ParsedTurn]:
    """One turn of every episode (each given with its system message), in one batched generation."""
    from .generate import generate
    chats, template_tools = act_prompts(episodes, tools, tokenizer)
    texts = generate(model, tokenizer, chats, max_new_tokens, batch_size, temperature=temperature, seed=seed,
                     desc=desc, tools=template_tools)
    return parsed_turns(texts, episodes, tools)
