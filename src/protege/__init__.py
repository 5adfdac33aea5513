"""protege: a task and a teacher LLM in, a small specialist model out."""

__version__ = "0.1.0"

# Every method registers itself when its file is imported; the task spec's unions of method options
# are built from those registries once, here, after protege.config is complete (method files import it).
from . import config as _config  # noqa: E402

_config.bind_registries()
