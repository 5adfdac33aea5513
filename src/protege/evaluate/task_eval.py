"""Score predictions on a test set: one record per item plus a summary with a confidence interval."""

from __future__ import annotations

from ..config import EvalConfig, Example, MetricConfig
from .bootstrap import bootstrap_ci, pass_at_k
from ..records import task_chat
from .metrics import as_metric, clean_text, score


def item_record(index: int, item: Example, samples: list[str], metric: MetricConfig) -> dict:
    """One item scored on all its samples. Its score is the mean over samples: for a pass/fail metric
    that is c/n, the unbiased pass@1 estimate."""
    samples = [clean_text(s) for s in samples] or [""]
    scored = [score(metric, s, item.output, item.tests) for s in samples]
    values = [value for value, _ in scored]
    record = {"id": index, "input": item.input, "reference": item.output, "prediction": samples[0],
              "score": sum(values) / len(values), "details": scored[0][1]}
    if len(samples) > 1:
        record.update(predictions=samples, sample_scores=values, passed=sum(v >= 1.0 for v in values))
    return record


def summarize(records: list[dict], metric: MetricConfig, cfg: EvalConfig) -> dict:
    scores = [r["score"] for r in records]
    n = len(scores)
    low, high = bootstrap_ci(scores, cfg.confidence, cfg.bootstrap) if n else (0.0, 0.0)
    summary = {"metric": metric.name, "n": n, "correct": sum(scores), "accuracy": sum(scores) / n if n else 0.0,
               "ci": [low, high], "confidence": cfg.confidence}
    samples = min((len(r.get("predictions", [None])) for r in records), default=1)
    if samples > 1:
        summary["pass_at_k"] = {str(k): sum(pass_at_k(len(r["predictions"]), r["passed"], k) for r in records) / n
                                for k in metric.k if k <= samples}
    return summary


def score_predictions(items: list[Example], predictions: list[str] | list[list[str]], metric: MetricConfig,
                      cfg: EvalConfig) -> tuple[list[dict], dict]:
    """predictions holds one answer per item, or a list of sampled answers per item."""
    if len(items) != len(predictions):
        raise ValueError(f"score_predictions: {len(items)} items but {len(predictions)} predictions")
    metric = as_metric(metric)
    per_item = [list(p) if isinstance(p, (list, tuple)) else [p] for p in predictions]
    records = [item_record(i, item, samples, metric) for i, (item, samples) in enumerate(zip(items, per_item))]
    return records, summarize(records, metric, cfg)


def evaluate_model(model, tokenizer, items: list[Example], instruction: str, metric: MetricConfig,
                   cfg: EvalConfig, desc: str = "eval") -> tuple[list[dict], dict]:
    """One greedy answer per item, or cfg.samples sampled ones (seeds 0..samples-1) for pass@k."""
    from ..models.generate import generate  # torch: loaded when a model answers, not with the registry
    chats = [task_chat(instruction, item.input, item.context()) for item in items]
    if cfg.samples == 1:
        return score_predictions(items, generate(model, tokenizer, chats, cfg.max_new_tokens, cfg.batch_size,
                                                 desc=desc), metric, cfg)
    passes = [generate(model, tokenizer, chats, cfg.max_new_tokens, cfg.batch_size, temperature=cfg.temperature,
                       seed=seed, desc=f"{desc} sample {seed + 1}/{cfg.samples}") for seed in range(cfg.samples)]
    return score_predictions(items, [list(answers) for answers in zip(*passes)], metric, cfg)
