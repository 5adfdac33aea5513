"""Agents that call tools over several turns: the tools and their per-episode environment, episodes,
and the chat format of tool calls (render and parse)."""
