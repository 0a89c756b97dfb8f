"""Sweep definitions: the YAML files under `search_spaces/` that users edit (installed with the package
as `kdtune.builtin_spaces`), any other YAML file given by its path, or the same document as a dict.

    grid:                     # for --grid NAME
      temperature: [1, 2, 4]  # a list is a grid axis
      alpha: 0.5              # a single value is held fixed
    optuna:                   # for --optuna NAME
      temperature: {loguniform: [1, 20]}
      alpha: {uniform: [0, 1]}
      method: {categorical: [kd, ls]}

`method` (kdtune.engine.losses.METHODS) may be fixed, a grid axis or a categorical; a space that
does not name it is `kd`, plain distillation.  The top level holds `grid`, `optuna` and `description` only, and
each value of an axis or categorical is listed once.

Files are UTF-8, at most 1 MiB, read as safe YAML (tags such as `!!python/object` are refused) with numbers
written as YAML 1.2 and JSON write them (`1e-3` is a number); anchors, aliases and repeated keys are refused.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Hashable
from pathlib import Path

import yaml

from kdtune.engine.errors import UserError, first_line, quote
from kdtune.engine.losses import METHODS
from kdtune.report.record import SearchSpace, format_value

PARAMETERS = {"temperature": (0.0, math.inf, False), "alpha": (0.0, 1.0, True)}  # (low, high, high inclusive)
CATEGORICAL = {"method": METHODS}  # parameters whose values are names; optional, with the first as default
DISTRIBUTIONS = ("uniform", "loguniform", "categorical")
KINDS = ("grid", "optuna")
TOP_LEVEL = (*KINDS, "description")
MAX_BYTES = 2**20  # a search space is a few lines; the cap bounds what reading a wrong file costs


class RefusedYAML(yaml.YAMLError):
    """Plain YAML that a search space refuses (an alias, a repeated key): its message is the whole error line."""


class SpaceLoader(yaml.SafeLoader):
    """Safe loading (no `!!python/...` tags) that refuses anchors, aliases and repeated keys."""

    def compose_node(self, parent, index):
        # Refused before composing: an alias is never expanded, so nested ones (a "billion laughs") cost nothing.
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise RefusedYAML(f"line {event.start_mark.line + 1}: search spaces need no anchors or aliases (&name, *name)")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        # A plain YAML mapping keeps the last of a repeated key and drops the others without a word.
        self.flatten_mapping(node)
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the SafeLoader refuses it below
            if key in seen:
                raise RefusedYAML(f"line {key_node.start_mark.line + 1}: key {quote(key)} is given twice; give each key once")
            seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.1 (PyYAML's) reads 1e308, 1e-3 and 2E5 as strings: its floats need a dot and a signed exponent.
YAML12_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")
SpaceLoader.add_implicit_resolver("tag:yaml.org,2002:float", YAML12_EXPONENT_FLOAT, list("-+0123456789."))


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
            raise UserError(f"search space {quote(space.name)} is a {space.kind} space, not {kind}")
        return space
    if isinstance(space, dict):
        document = space if any(k in space for k in KINDS) else {kind: space}
        return parse_search_space(document, kind, "custom", "search space (dict)")
    if isinstance(space, (str, os.PathLike)):
        return load_search_space(str(space), kind)
    raise UserError(f"invalid search space {quote(space)}: give a name, a YAML file or a dict")


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
    return parse_search_space(read_document(path), kind, path.stem, f"search space {path}")


def read_document(path: Path):
    """A search-space file's YAML document, read by SpaceLoader."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_BYTES + 1)
            size = max(os.fstat(file.fileno()).st_size, len(data))
    except OSError as error:
        raise UserError(f"search space {path} cannot be read: {first_line(error)}") from None
    if size > MAX_BYTES:
        raise UserError(f"search space {path} is {size} bytes, more than the {MAX_BYTES} (1 MiB) a search space may have")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"search space {path} is not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start}); "
                        "save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=SpaceLoader)
    except RefusedYAML as error:
        raise UserError(f"search space {path}, {error}") from None
    except yaml.YAMLError as error:
        raise UserError(f"search space {path} is not valid YAML (only plain YAML is accepted): {_yaml_problem(error)}") from None
    except RecursionError:
        raise UserError(f"search space {path} is nested too deeply to be a search space") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """What a YAML error says is wrong, and where, in one line (its first line is often only the context)."""
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if problem and mark:
        return first_line(f"{problem} (line {mark.line + 1}, column {mark.column + 1})")
    return first_line(error)


def parse_search_space(document, kind: str, name: str, where: str) -> SearchSpace:
    """The `kind` section of a search-space document (see the module docstring); `where` names it in errors."""
    if isinstance(document, dict):
        unknown = [k for k in document if k not in TOP_LEVEL]
        if unknown:
            raise UserError(f"{where}: unknown top-level key {quote(unknown[0])}; allowed: {', '.join(TOP_LEVEL)}")
        if not isinstance(document.get("description", ""), (str, type(None))):  # `description:` left empty is None
            raise UserError(f"{where}: description must be text, not {quote(document['description'])}")
    if not isinstance(document, dict) or not isinstance(document.get(kind), dict):
        sections = ", ".join(k for k in KINDS if isinstance(document, dict) and isinstance(document.get(k), dict))
        raise UserError(f"{where} has no '{kind}:' section (it has: {sections or 'none'})")
    fixed, axes, distributions = {}, {}, {}
    for param, spec in document[kind].items():
        if param not in PARAMETERS and param not in CATEGORICAL:
            raise UserError(f"{where}: unknown parameter {quote(param)}; allowed: {', '.join([*PARAMETERS, *CATEGORICAL])}")
        at = f"{where}, {kind}.{param}"
        if isinstance(spec, list):
            if kind != "grid" or not spec:
                raise UserError(f"{at}: a list of values is a grid axis; use it in a 'grid:' section, non-empty")
            axes[param] = _once([_check_value(param, v, at) for v in spec], spec, at)
        elif isinstance(spec, dict):
            distributions[param] = _check_distribution(param, spec, kind, at)
        else:
            fixed[param] = _check_value(param, spec, at)
    if not axes and not distributions:
        raise UserError(f"{where}: '{kind}:' varies nothing; give at least one parameter a list or distribution")
    for param in PARAMETERS:  # CATEGORICAL ones may be left out: their first value
        if param not in fixed and param not in axes and param not in distributions:
            raise UserError(f"{where}: '{kind}:' does not set {param!r}")
    return SearchSpace(name, kind, fixed, axes, distributions, document.get("description") or "")


def _check_value(param: str, value, where: str) -> float | str:
    if param in CATEGORICAL:
        if value not in CATEGORICAL[param]:
            raise UserError(f"{where}: invalid value {quote(value)}; must be one of {', '.join(CATEGORICAL[param])}")
        return value
    low, high, inclusive = PARAMETERS[param]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if param == "temperature" else low <= value) and (value <= high if inclusive else value < high)
    if not ok:
        allowed = "a number > 0" if param == "temperature" else "a number in [0, 1]"
        raise UserError(f"{where}: invalid value {quote(value)}; must be {allowed}")
    return float(value)


def _check_distribution(param: str, spec: dict, kind: str, where: str) -> tuple:
    if kind != "optuna" or len(spec) != 1:
        raise UserError(f"{where}: a distribution is one of {', '.join(DISTRIBUTIONS)} in an 'optuna:' section")
    (dist, bounds), = spec.items()
    if param in CATEGORICAL or dist == "categorical":
        if param not in CATEGORICAL or dist != "categorical" or not isinstance(bounds, list) or len(bounds) < 2:
            raise UserError(f"{where}: {param} takes {{categorical: [two or more of {', '.join(CATEGORICAL.get(param, ()))}]}}"
                            if param in CATEGORICAL else f"{where}: {param} is a number: use uniform or loguniform")
        return dist, _once([_check_value(param, b, where) for b in bounds], bounds, where)
    if dist not in DISTRIBUTIONS or not isinstance(bounds, list) or len(bounds) != 2:
        raise UserError(f"{where}: unknown distribution {quote(spec)}; "
                        "use {uniform: [low, high]} or {loguniform: [low, high]}")
    low, high = (_check_value(param, b, where) for b in bounds)
    if not low < high or (dist == "loguniform" and low <= 0):
        raise UserError(f"{where}: invalid bounds {quote(bounds)}; need low < high (and low > 0 for loguniform)")
    return dist, low, high


def _once(values: list, given: list, where: str) -> list:
    """`values` (checked and normalised from `given`) if none repeats: a repeat would plan the same points twice."""
    first = {}
    for i, value in enumerate(values):
        if value in first:
            was, now = quote(given[first[value]]), quote(given[i])
            as_given = "" if was == now else f" (as {was} and {now})"
            raise UserError(f"{where}: {format_value(value)} is listed twice{as_given}; list each value once")
        first[value] = i
    return values


def apply_overrides(space: SearchSpace, overrides: dict) -> SearchSpace:
    """A preset's values (e.g. the seed's T list and alpha) replace those of the same shape only:
    a list replaces a grid axis, a single value a fixed value, so `--grid alpha` keeps its alpha axis."""
    axes = {k: list(overrides[k]) if isinstance(overrides.get(k), list) else v for k, v in space.axes.items()}
    fixed = {k: float(overrides[k]) if isinstance(overrides.get(k), (int, float)) else v for k, v in space.fixed.items()}
    return SearchSpace(space.name, space.kind, fixed, axes, space.distributions, space.description)
