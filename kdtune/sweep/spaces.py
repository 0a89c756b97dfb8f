"""Sweep definitions: the YAML files under `search_spaces/` that users edit (installed with the package
as `kdtune.builtin_spaces`), any other YAML file given by its path, or the same document as a dict.

    grid:                     # for --grid NAME
      temperature: [1, 2, 4]  # a list is a grid axis
      alpha: 0.5              # a single value is held fixed
    optuna:                   # for --optuna NAME
      temperature: {loguniform: [1, 20]}
      alpha: {uniform: [0, 1]}
      method: {categorical: [kd, ls]}

`method` (kdtune.engine.losses.METHODS: kd, ls, ctkd) may be fixed, a grid axis or a categorical; a space that
does not name it is `kd`, plain distillation.

Files are read with `yaml.safe_load`: tags such as `!!python/object` are refused.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import yaml

from kdtune.engine.errors import UserError, first_line
from kdtune.engine.losses import METHODS
from kdtune.report.record import SearchSpace

PARAMETERS = {"temperature": (0.0, math.inf, False), "alpha": (0.0, 1.0, True)}  # (low, high, high inclusive)
CATEGORICAL = {"method": METHODS}  # parameters whose values are names; optional, with the first as default
DISTRIBUTIONS = ("uniform", "loguniform", "categorical")
KINDS = ("grid", "optuna")


def default_dir() -> Path:
    """$KDTUNE_SEARCH_SPACES, else the checkout's search_spaces/, else the copy installed in the package."""
    env = os.environ.get("KDTUNE_SEARCH_SPACES")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent / "search_spaces"
    return checkout if checkout.is_dir() else package / "builtin_spaces"


def available(directory: Path | None = None) -> list[str]:
    directory = directory or default_dir()
    return sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []


def is_path(name: str) -> bool:
    """`--grid mine` names a built-in space; `--grid spaces/mine.yaml` is a file."""
    return name.endswith((".yaml", ".yml")) or "/" in name or os.sep in name


def space_label(space) -> str:
    """A short name for experiment names: the space's name, a file's stem, or 'custom' for a dict."""
    if isinstance(space, SearchSpace):
        return space.name
    return Path(space).stem if isinstance(space, (str, os.PathLike)) else "custom"


def resolve_search_space(space, kind: str) -> SearchSpace:
    """A built-in name, a YAML file, a dict (a whole document or just the `kind` section) or a SearchSpace."""
    if isinstance(space, SearchSpace):
        if space.kind != kind:
            raise UserError(f"search space {space.name!r} is a {space.kind} space, not {kind}")
        return space
    if isinstance(space, dict):
        document = space if any(k in space for k in KINDS) else {kind: space}
        return parse_search_space(document, kind, "custom", "search space (dict)")
    if isinstance(space, (str, os.PathLike)):
        return load_search_space(str(space), kind)
    raise UserError(f"invalid search space {space!r}: give a name, a YAML file or a dict")


def load_search_space(name: str, kind: str, directory: Path | None = None) -> SearchSpace:
    if is_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"search space file {name} not found")
    else:
        directory = directory or default_dir()
        path = directory / f"{name}.yaml"
        if not path.is_file():
            raise UserError(f"unknown search space {name!r}; available in {directory}: "
                            f"{', '.join(available(directory)) or 'none'} (or give a path to a .yaml file)")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"search space {path} is not valid YAML (only plain YAML is accepted): {first_line(error)}") from None
    return parse_search_space(document, kind, path.stem, f"search space {path}")


def parse_search_space(document, kind: str, name: str, where: str) -> SearchSpace:
    """The `kind` section of a search-space document (see the module docstring); `where` names it in errors."""
    if not isinstance(document, dict) or not isinstance(document.get(kind), dict):
        sections = ", ".join(k for k in KINDS if isinstance(document, dict) and isinstance(document.get(k), dict))
        raise UserError(f"{where} has no '{kind}:' section (it has: {sections or 'none'})")
    fixed, axes, distributions = {}, {}, {}
    for param, spec in document[kind].items():
        if param not in PARAMETERS and param not in CATEGORICAL:
            raise UserError(f"{where}: unknown parameter {param!r}; allowed: {', '.join([*PARAMETERS, *CATEGORICAL])}")
        at = f"{where}, {kind}.{param}"
        if isinstance(spec, list):
            if kind != "grid" or not spec:
                raise UserError(f"{at}: a list of values is a grid axis; use it in a 'grid:' section, non-empty")
            axes[param] = [_check_value(param, v, at) for v in spec]
        elif isinstance(spec, dict):
            distributions[param] = _check_distribution(param, spec, kind, at)
        else:
            fixed[param] = _check_value(param, spec, at)
    if not axes and not distributions:
        raise UserError(f"{where}: '{kind}:' varies nothing; give at least one parameter a list or distribution")
    for param in PARAMETERS:  # CATEGORICAL ones may be left out: their first value
        if param not in fixed and param not in axes and param not in distributions:
            raise UserError(f"{where}: '{kind}:' does not set {param!r}")
    return SearchSpace(name, kind, fixed, axes, distributions, str(document.get("description", "")))


def _check_value(param: str, value, where: str) -> float | str:
    if param in CATEGORICAL:
        if value not in CATEGORICAL[param]:
            raise UserError(f"{where}: invalid value {value!r}; must be one of {', '.join(CATEGORICAL[param])}")
        return value
    low, high, inclusive = PARAMETERS[param]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if param == "temperature" else low <= value) and (value <= high if inclusive else value < high)
    if not ok:
        allowed = "a number > 0" if param == "temperature" else "a number in [0, 1]"
        raise UserError(f"{where}: invalid value {value!r}; must be {allowed}")
    return float(value)


def _check_distribution(param: str, spec: dict, kind: str, where: str) -> tuple:
    if kind != "optuna" or len(spec) != 1:
        raise UserError(f"{where}: a distribution is one of {', '.join(DISTRIBUTIONS)} in an 'optuna:' section")
    (dist, bounds), = spec.items()
    if param in CATEGORICAL or dist == "categorical":
        if param not in CATEGORICAL or dist != "categorical" or not isinstance(bounds, list) or len(bounds) < 2:
            raise UserError(f"{where}: {param} takes {{categorical: [two or more of {', '.join(CATEGORICAL.get(param, ()))}]}}"
                            if param in CATEGORICAL else f"{where}: {param} is a number: use uniform or loguniform")
        return dist, [_check_value(param, b, where) for b in bounds]
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
