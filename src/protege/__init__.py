"""protege: a task and a teacher LLM in, a small specialist model out."""

__version__ = "0.1.0"
