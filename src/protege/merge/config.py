"""`protege merge FILE.yaml`: mergekit's YAML shape, for the methods protege has.

    merge_method: ties                 # linear, task_arithmetic, ties, dare_linear (dare), breadcrumbs, lines
    base_model: ../student-base
    models:
      - model: ../round-1              # a model directory or a LoRA adapter of base_model
        parameters: {weight: 1.0, density: 0.5}
      - model: ../round-2
        parameters: {weight: 0.5, density: 0.3}
    parameters: {normalize: true, lambda: 1.0}
    dtype: bfloat16
    out: merged                        # protege: where to write (the command line's --out wins)

Parameters mean what they mean in mergekit and resolve as there: a model's own value, else the global
one, else mergekit's default for the method (density 1.0 keeps everything). protege then calls its
own method with its own parameter names: DARE's density becomes a drop rate, mergekit's breadcrumbs
`gamma` (the paper's beta) the share of outliers dropped, and `normalize` on a method that sums
task vectors divides `lambda` by the weights' total, as mergekit divides the sum. What protege
cannot reproduce (dare_ties, della, slerp, normalize: false for TIES, ...) is refused, not
approximated.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, Field, ValidationError, field_validator

from ..config import ConfigError, Strict, field_name, first_error, line_of, read_yaml_mapping
from ..models import is_adapter

DType = Literal["float32", "float16", "bfloat16"]


class MergeError(Exception):
    """Models that cannot be merged (a missing tensor, mismatched shapes, an adapter that is not
    plain LoRA); str() is the one line shown to the user."""


@dataclasses.dataclass(frozen=True)
class Method:
    """How a mergekit method name maps onto a protege method."""
    name: str  # protege's registered method
    reads: frozenset[str]  # the YAML parameters it takes
    normalize: bool | None = None  # mergekit's default, when it reads normalize
    normalize_fixed: bool = False  # protege computes only the default
    rescale: bool | None = None  # the one value protege computes, when it reads rescale


SUMMED = frozenset({"weight", "lambda", "normalize", "int8_mask"})
METHODS = {
    "linear": Method("linear", frozenset({"weight", "normalize"}), normalize=True, normalize_fixed=True),
    "task_arithmetic": Method("task_arithmetic", SUMMED, normalize=False),
    # protege's TIES always takes the disjoint mean, which is mergekit's normalize: true
    "ties": Method("ties", SUMMED | {"density", "rescale"}, normalize=True, normalize_fixed=True,
                   rescale=False),
    # protege's DARE rescales survivors by 1 / density, as the paper does (mergekit: an L1 ratio)
    "dare_linear": Method("dare", SUMMED | {"density", "rescale", "seed"}, normalize=False, rescale=True),
    "breadcrumbs": Method("breadcrumbs", SUMMED | {"density", "gamma", "rescale"}, normalize=False,
                          rescale=False),
    "lines": Method("lines", frozenset({"weight", "alpha", "beta"})),
}
ALIASES = {"dare": "dare_linear"}
SUPPORTED = ", ".join(sorted({*METHODS, *ALIASES}))


class ModelParameters(Strict):
    weight: float | None = Field(None, description="This model's weight. Empty: the global weight, else 1.0 "
                                 "(mergekit requires one).")
    density: float | None = Field(None, ge=0, le=1, description="ties, dare_linear, breadcrumbs: share of the "
                                  "task vector's entries kept. Empty: the global density, else 1.0 (all).")
    gamma: float | None = Field(None, ge=0, le=1, description="breadcrumbs: share of the largest changes dropped "
                                "as outliers (the paper's beta). Empty: the global gamma, else 0.01.")


class GlobalParameters(ModelParameters):
    normalize: bool | None = Field(None, description="Divide the summed task vectors by the weights' total "
                                   "(ties: by the agreeing weights'). Empty: mergekit's default for the method.")
    lambda_: float = Field(1.0, alias="lambda", description="Factor on the merged task vector.")
    rescale: bool | None = Field(None, description="dare_linear must rescale (protege: by 1 / density), ties and "
                                 "breadcrumbs must not; accepted for mergekit files. Empty: the method's way.")
    int8_mask: bool = Field(False, description="mergekit's memory saving for masks; no effect on the result.")
    seed: int = Field(0, description="dare_linear: seed of the random masks (per tensor name and model).")
    alpha: float = Field(0.0, description="lines: scale of the task vector at the first layer and outside "
                         "the layers.")
    beta: float = Field(1.0, description="lines: scale added by the last layer (alpha + beta * l / (L - 1)).")


class ModelEntry(Strict):
    model: str = Field("", description="A model directory or a LoRA adapter of base_model (relative to this "
                       "file), embedded:NAME or tiny:SEED.")
    parameters: ModelParameters = Field(default_factory=ModelParameters, description="This model's parameters.")


class MergeConfig(Strict):
    merge_method: str = Field("linear", description=f"The merge: {SUPPORTED}.")
    base_model: str = Field("", description="The model task vectors are taken from (a directory relative to this "
                            "file, embedded:NAME or tiny:SEED). Required but for linear, where it is one more model "
                            "averaged, with the global weight.")
    models: list[ModelEntry] = Field(default_factory=list, description="The models merged onto the base.")
    parameters: GlobalParameters = Field(default_factory=GlobalParameters,
                                         description="Parameters of the method; each model's own values win.")
    dtype: DType | None = Field(None, description="Dtype of the merged weights (protege computes in float32). "
                                "Empty: the base's.")
    out_dtype: DType | None = Field(None, description="Dtype written, when it differs from dtype.")
    out: str = Field("merged", description="protege: output directory, relative to this file; the command "
                     "line's --out wins.")
    shard_size: int = Field(2 << 30, gt=0, description="protege: largest output shard, in bytes or as "
                            "transformers writes it ('500MB', '2GiB').")

    @field_validator("merge_method")
    @classmethod
    def _supported(cls, value: str) -> str:
        if value not in METHODS and value not in ALIASES:
            raise ValueError(f"unsupported merge method {value!r}; protege merges: {SUPPORTED}")
        return value

    @field_validator("shard_size", mode="before")
    @classmethod
    def _size(cls, value):
        from transformers.utils.hub import convert_file_size_to_int
        return convert_file_size_to_int(value) if isinstance(value, str) else value

    @property
    def method(self) -> Method:
        return METHODS[ALIASES.get(self.merge_method, self.merge_method)]


@dataclasses.dataclass
class MergePlan:
    """What merge_dirs is called with."""
    method: str
    base: Path
    models: list[Path]
    weights: list[float]
    params: dict
    out: Path
    shard_bytes: int
    dtype: torch.dtype | None


def merge_from_yaml(path: Path, out: Path | None = None, overwrite: bool = False) -> Path:
    """Merge as the YAML file says; `out` overrides its `out`. Raises ConfigError for a file that
    cannot be used (file:line:field), for weights that cannot be read (models.weights.WeightsError) and
    for an output folder protege did not write (unless `overwrite`); MergeError for models that cannot
    be merged."""
    from .streaming import merge_dirs

    plan = load_plan(Path(path), out)
    try:
        return merge_dirs(plan.base, plan.models, plan.method, plan.params, plan.out, plan.weights,
                          plan.shard_bytes, plan.dtype, overwrite)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        raise MergeError(f"{path}: {exc.args[0] if exc.args else exc}") from None


def load_plan(path: Path, out: Path | None = None) -> MergePlan:
    if not path.is_file():
        raise ConfigError(f"{path}:1: field '(document)': merge file not found")
    config, lines = parse_merge(path.read_text(encoding="utf-8"), str(path))
    check(config, lines, str(path))
    return plan_merge(config, lines, str(path), path.parent, out)


def parse_merge(text: str, where: str) -> tuple[MergeConfig, dict[tuple, int]]:
    data, lines = read_yaml_mapping(text, where, "merge fields: merge_method, base_model, models")
    try:
        return MergeConfig.model_validate(data), lines
    except ValidationError as exc:
        raise first_error(exc, lines, where) from None


def fail(where: str, lines: dict[tuple, int], loc: tuple, message: str) -> ConfigError:
    return ConfigError(f"{where}:{line_of(lines, loc)}: field '{field_name(loc)}': {message}")


def written(parameters: BaseModel) -> list[str]:
    """The parameter names the file sets, as it spells them."""
    fields = type(parameters).model_fields
    return sorted(fields[name].alias or name for name in parameters.model_fields_set)


def check(config: MergeConfig, lines: dict[tuple, int], where: str) -> None:
    """What pydantic cannot see alone: parameters the method does not read, values it cannot compute."""
    method, name = config.method, config.merge_method
    if not config.models:
        raise fail(where, lines, ("models",), "no models to merge")
    if not config.base_model and name != "linear":
        raise fail(where, lines, ("base_model",), f"{name} needs a base_model")
    blocks = [(("parameters",), config.parameters)]
    blocks += [(("models", i, "parameters"), entry.parameters) for i, entry in enumerate(config.models)]
    for loc, parameters in blocks:
        for key in written(parameters):
            if key not in method.reads:
                raise fail(where, lines, loc + (key,), f"not a parameter of {name} (it reads: "
                           f"{', '.join(sorted(method.reads))})")
        if method.name == "dare" and parameters.density == 0:
            raise fail(where, lines, loc + ("density",), "dare_linear needs a density above 0")
    check_fixed(config, lines, where)


def check_fixed(config: MergeConfig, lines: dict[tuple, int], where: str) -> None:
    method, given = config.method, config.parameters
    if method.normalize_fixed and given.normalize not in (None, method.normalize):
        raise fail(where, lines, ("parameters", "normalize"), f"protege's {config.merge_method} computes only "
                   f"normalize: {str(method.normalize).lower()}")
    if given.rescale not in (None, method.rescale):
        raise fail(where, lines, ("parameters", "rescale"), f"protege's {config.merge_method} computes only "
                   f"rescale: {str(method.rescale).lower()}")


def plan_merge(config: MergeConfig, lines: dict[tuple, int], where: str, directory: Path,
               out: Path | None) -> MergePlan:
    base, entries = merge_inputs(config, lines, where, directory)
    target = Path(out) if out is not None else directory / config.out
    if target.resolve() in {base, *(path for path, _ in entries)}:
        raise fail(where, lines, ("out",), f"{target} is one of the models merged")
    own = [parameters for _, parameters in entries]
    weights = [resolved(parameters, config.parameters, "weight", 1.0) for parameters in own]
    dtype = config.out_dtype or config.dtype
    return MergePlan(config.method.name, base, [path for path, _ in entries], weights,
                     method_params(config, own, weights), target, config.shard_size,
                     getattr(torch, dtype) if dtype else None)


def merge_inputs(config: MergeConfig, lines: dict[tuple, int], where: str,
                 directory: Path) -> tuple[Path, list[tuple[Path, ModelParameters]]]:
    """The base and the (model, its parameters) merged onto it, as mergekit counts them."""
    paths = [resolve_model(entry.model, directory, where, lines, ("models", i, "model"))
             for i, entry in enumerate(config.models)]
    entries = list(zip(paths, [entry.parameters for entry in config.models]))
    linear = config.method.name == "linear"
    if not config.base_model:
        for i, path in enumerate(paths):
            if is_adapter(path):
                raise fail(where, lines, ("models", i, "model"), "a LoRA adapter needs a base_model")
        return paths[0], entries
    base = resolve_model(config.base_model, directory, where, lines, ("base_model",))
    if linear and base not in paths:
        # mergekit's linear averages the base too, with the global weight
        entries.insert(0, (base, ModelParameters()))
    elif not linear:
        # the base listed among the models is the base, not one more task vector
        entries = [(path, parameters) for path, parameters in entries if path != base]
    if not entries:
        raise fail(where, lines, ("models",), "no model to merge besides the base")
    return base, entries


def resolve_model(spec: str, directory: Path, where: str, lines: dict[tuple, int], loc: tuple) -> Path:
    from ..models import ModelNotFound, model_dir

    if not spec:
        raise fail(where, lines, loc, "a model is required")
    path = Path(spec) if Path(spec).is_absolute() else directory / spec
    if is_adapter(path):
        if loc == ("base_model",):
            raise fail(where, lines, loc, f"{spec} is a LoRA adapter; the base must be a full model")
        return path.resolve()
    try:
        return model_dir(spec, directory)
    except ModelNotFound as exc:
        raise fail(where, lines, loc, str(exc)) from None


def resolved(own: ModelParameters, shared: GlobalParameters, key: str, default: float) -> float:
    """mergekit's precedence: the model's value, else the global one, else the default."""
    for parameters in (own, shared):
        if getattr(parameters, key) is not None:
            return getattr(parameters, key)
    return default


def method_params(config: MergeConfig, own: list[ModelParameters], weights: list[float]) -> dict:
    """The keyword parameters of protege's method, from mergekit's."""
    method, shared = config.method, config.parameters

    def each(key: str, default: float) -> list[float]:
        return [resolved(parameters, shared, key, default) for parameters in own]
    if method.name == "linear":
        return {}
    if method.name == "lines":
        return {"alpha": shared.alpha, "beta": shared.beta}
    params = {"scale": summed_scale(shared, method, weights)}
    if method.name == "ties":
        params["density"] = each("density", 1.0)
    elif method.name == "dare":
        params.update(drop=[1.0 - density for density in each("density", 1.0)], seed=shared.seed)
    elif method.name == "breadcrumbs":
        params.update(density=each("density", 1.0), beta=each("gamma", 0.01))
    return params


def summed_scale(shared: GlobalParameters, method: Method, weights: list[float]) -> float:
    """lambda, over the weights' total when normalizing a sum (ties normalizes inside the method)."""
    normalize = method.normalize if shared.normalize is None else shared.normalize
    if not normalize or method.normalize_fixed:
        return shared.lambda_
    total = sum(weights)
    # as mergekit: a total near zero is not divided by
    return shared.lambda_ / total if abs(total) >= 1e-8 else shared.lambda_
