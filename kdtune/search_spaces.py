"""Sweep definitions: the YAML files under `search_spaces/` that users edit.

    grid:                     # for --grid NAME
      temperature: [1, 2, 4]  # a list is a grid axis
      alpha: 0.5              # a single value is held fixed
    optuna:                   # for --optuna NAME
      temperature: {loguniform: [1, 20]}
      alpha: {uniform: [0, 1]}

Files are read with `yaml.safe_load`: tags such as `!!python/object` are refused.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from kdtune.errors import UserError

PARAMETERS = {"temperature": (0.0, math.inf, False), "alpha": (0.0, 1.0, True)}  # (low, high, high inclusive)
DISTRIBUTIONS = ("uniform", "loguniform")
KINDS = ("grid", "optuna")


@dataclass(frozen=True)
class SearchSpace:
    name: str
    kind: str  # "grid" or "optuna"
    fixed: dict[str, float]  # parameter -> value
    axes: dict[str, list[float]]  # grid: parameter -> values
    distributions: dict[str, tuple[str, float, float]]  # optuna: parameter -> (distribution, low, high)
    description: str = ""

    @property
    def varied(self) -> list[str]:
        return list(self.axes) + list(self.distributions)


def default_dir() -> Path:
    """search_spaces/ of the checkout, or $KDTUNE_SEARCH_SPACES."""
    env = os.environ.get("KDTUNE_SEARCH_SPACES")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "search_spaces"


def available(directory: Path | None = None) -> list[str]:
    directory = directory or default_dir()
    return sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []


def load_search_space(name: str, kind: str, directory: Path | None = None) -> SearchSpace:
    directory = directory or default_dir()
    path = directory / f"{name}.yaml"
    if "/" in name or not path.is_file():
        raise UserError(f"unknown search space {name!r}; available in {directory}: {', '.join(available(directory)) or 'none'}")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"search space {path} is not valid YAML (only plain YAML is accepted): {first}") from None
    if not isinstance(document, dict) or not isinstance(document.get(kind), dict):
        sections = ", ".join(k for k in KINDS if isinstance(document, dict) and isinstance(document.get(k), dict))
        raise UserError(f"search space {path} has no '{kind}:' section (it has: {sections or 'none'})")
    fixed, axes, distributions = {}, {}, {}
    for param, spec in document[kind].items():
        if param not in PARAMETERS:
            raise UserError(f"search space {path}: unknown parameter {param!r}; allowed: {', '.join(PARAMETERS)}")
        where = f"search space {path}, {kind}.{param}"
        if isinstance(spec, list):
            if kind != "grid" or not spec:
                raise UserError(f"{where}: a list of values is a grid axis; use it in a 'grid:' section, non-empty")
            axes[param] = [_check_value(param, v, where) for v in spec]
        elif isinstance(spec, dict):
            distributions[param] = _check_distribution(param, spec, kind, where)
        else:
            fixed[param] = _check_value(param, spec, where)
    if not axes and not distributions:
        raise UserError(f"search space {path}: '{kind}:' varies nothing; give at least one parameter a list or distribution")
    for param in PARAMETERS:
        if param not in fixed and param not in axes and param not in distributions:
            raise UserError(f"search space {path}: '{kind}:' does not set {param!r}")
    return SearchSpace(name, kind, fixed, axes, distributions, str(document.get("description", "")))


def _check_value(param: str, value, where: str) -> float:
    low, high, inclusive = PARAMETERS[param]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if param == "temperature" else low <= value) and (value <= high if inclusive else value < high)
    if not ok:
        allowed = "a number > 0" if param == "temperature" else "a number in [0, 1]"
        raise UserError(f"{where}: invalid value {value!r}; must be {allowed}")
    return float(value)


def _check_distribution(param: str, spec: dict, kind: str, where: str) -> tuple[str, float, float]:
    if kind != "optuna" or len(spec) != 1:
        raise UserError(f"{where}: a distribution is one of {', '.join(DISTRIBUTIONS)} in an 'optuna:' section")
    (dist, bounds), = spec.items()
    if dist not in DISTRIBUTIONS or not isinstance(bounds, list) or len(bounds) != 2:
        raise UserError(f"{where}: unknown distribution {spec!r}; use {{uniform: [low, high]}} or {{loguniform: [low, high]}}")
    low, high = (_check_value(param, b, where) for b in bounds)
    if not low < high or (dist == "loguniform" and low <= 0):
        raise UserError(f"{where}: invalid bounds {bounds!r}; need low < high (and low > 0 for loguniform)")
    return dist, low, high


def apply_overrides(space: SearchSpace, overrides: dict) -> SearchSpace:
    """A preset's values (e.g. the seed's T list and alpha) replace those of the same shape only:
    a list replaces a grid axis, a single value a fixed value, so `--grid alpha` keeps its alpha axis."""
    axes = {k: list(overrides[k]) if isinstance(overrides.get(k), list) else v for k, v in space.axes.items()}
    fixed = {k: float(overrides[k]) if isinstance(overrides.get(k), (int, float)) else v for k, v in space.fixed.items()}
    return SearchSpace(space.name, space.kind, fixed, axes, space.distributions, space.description)
