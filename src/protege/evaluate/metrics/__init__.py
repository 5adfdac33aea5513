"""Task metrics, selectable by name in the task YAML."""

from .exact import exact_match
from .numeric import numeric_match

METRICS = {"exact": exact_match, "numeric": numeric_match}


def score(metric: str, prediction: str, reference: str, tolerance: float = 1e-6) -> tuple[float, dict]:
    if metric == "numeric":
        return numeric_match(prediction, reference, tolerance)
    return METRICS[metric](prediction, reference)
