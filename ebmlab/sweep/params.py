"""Notebook parameters and grids: what a notebook declares, converting values to it, grid files, run ids.

Grid files (YAML or JSON; read by :func:`load_grid_file`)::

    description: optional text, ignored
    grid:                 # swept: every combination of these lists is one run
      lr: [1.0e-3, 1.0e-2]
      spectral_norm: [true, false]
    params:               # fixed for every run
      smoke: false
      overrides: {train.iterations: 200}

``1e-3`` reads as a float (plain YAML 1.1 would read a string); values are then converted to the types the
notebook declares. On the command line ``--grid key=v1,v2`` and ``-p key=value`` override a grid file:
``-p`` pins a swept key to one value, ``--grid`` replaces an axis (values containing commas, such as
dicts, belong in a grid file).
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ._common import SweepError, nearest

_MAX_ID = 96  # characters; ids are folder names, and deep paths break some tools (Windows, tar)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` (no dot) as a string; researchers write learning rates that way."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


@dataclass(frozen=True)
class Param:
    """One variable of a notebook's ``parameters`` cell."""

    name: str
    type_name: str  # the annotation as written ("float", "dict[str, float]"), or "None" when absent
    default: str  # the default's source text
    help: str = ""


def read_notebook(path, kernel_name: str | None = None):
    """The notebook as an nbformat node: jupytext for ``.py`` percent files, nbformat for ``.ipynb``.

    A jupytext file usually carries no kernelspec; papermill refuses to run or inspect a notebook without
    one, so the given kernel (default ``python3``) is written into its metadata.
    """
    import jupytext
    import nbformat

    path = Path(path)
    if not path.is_file():
        raise SweepError(f"notebook {path} does not exist")
    if path.suffix == ".ipynb":
        nb = nbformat.read(path, as_version=4)
    elif path.suffix == ".py":
        nb = jupytext.read(path)
    else:
        raise SweepError(f"notebook {path}: expected a jupytext .py (percent format) or an .ipynb file")
    spec = nb.metadata.get("kernelspec") or {}
    if kernel_name or not spec.get("name"):
        name = kernel_name or "python3"
        nb.metadata["kernelspec"] = {"name": name, "language": "python", "display_name": name}
    return nb


def notebook_parameters(notebook, kernel_name: str | None = None) -> dict[str, Param]:
    """The names, declared types and defaults of the notebook's ``parameters`` cell.

    papermill's inspection is the reference; an AST pass adds the names its regular expression skips
    (``x: int | None = None``, multi-target assignments), so a valid parameter is never reported unknown.
    """
    import papermill

    nb = read_notebook(notebook, kernel_name)
    cell = next((c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise SweepError(f"{notebook} has no cell tagged 'parameters'; tag its first code cell "
                         f"(jupytext: `# %% tags=[\"parameters\"]`) so a sweep can set its variables")
    found = {n: Param(n, str(p["inferred_type_name"]), str(p["default"]), str(p.get("help") or ""))
             for n, p in papermill.inspect_notebook(nb).items()}
    try:
        tree = ast.parse(cell.source)
    except SyntaxError:  # IPython magics in the cell: papermill's answer is all there is
        return found
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            ann = node.annotation
            type_name = ann.value if isinstance(ann, ast.Constant) and isinstance(ann.value, str) \
                else ast.unparse(ann)
            targets, value = [node.target], node.value
        elif isinstance(node, ast.Assign):
            type_name, targets, value = "None", [t for t in node.targets if isinstance(t, ast.Name)], node.value
        else:
            continue
        for t in targets:
            if t.id not in found:
                found[t.id] = Param(t.id, type_name, ast.unparse(value) if value is not None else "None")
    return found


_KINDS = {"int": int, "float": float, "bool": bool, "str": str, "dict": dict, "list": list, "tuple": list}


def _kind(p: Param) -> tuple[str | None, bool]:
    """(kind, optional): kind in _KINDS or None when the type is unknown; optional if None is allowed."""
    t = p.type_name.replace(" ", "").replace("typing.", "")
    optional = False
    m = re.fullmatch(r"Optional\[(.+)\]", t)
    if m:
        t, optional = m.group(1), True
    if "|" in t:
        parts = [x for x in t.split("|") if x != "None"]
        optional = optional or len(parts) < len(t.split("|"))
        t = parts[0] if len(parts) == 1 else "None"
    base = re.match(r"[A-Za-z_]*", t).group().lower()
    if base in _KINDS:
        return base, optional
    try:  # no usable annotation: the default's type decides
        d = ast.literal_eval(p.default)
    except (ValueError, SyntaxError):
        return None, True
    if d is None:
        return None, True
    return next((k for k, typ in _KINDS.items() if type(d) is typ), None), optional


def coerce_value(p: Param, value, where: str = "parameter"):
    """Convert `value` (a command-line string or a YAML/JSON value) to the type `p` declares."""
    kind, optional = _kind(p)

    def bad(why: str = ""):
        return SweepError(f"{where} {p.name!r} expects {p.type_name if p.type_name != 'None' else kind} "
                          f"(notebook default {p.default}); got {value!r}{': ' + why if why else ''}")

    if value is None or (isinstance(value, str) and optional and value in ("None", "null")):
        if optional or kind is None:
            return None
        raise bad("None is not allowed")
    if kind is None:  # unknown type: keep what YAML makes of the text
        return _yaml(value) if isinstance(value, str) else value
    if kind == "str":
        if isinstance(value, str):
            return value
        raise bad("quote it in the grid file to pass a string")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
        if isinstance(value, str) and value.strip().lower() in words:
            return words[value.strip().lower()]
        raise bad("use true or false")
    if kind in ("int", "float"):
        if isinstance(value, bool):
            raise bad("a bool is not a number")
        if isinstance(value, str):
            try:
                value = int(value) if kind == "int" and re.fullmatch(r"\s*[-+]?[0-9_]+\s*", value) else float(value)
            except ValueError:
                raise bad() from None
        if not isinstance(value, (int, float)):
            raise bad()
        if kind == "float":
            return float(value)
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise bad("not a whole number")
        return int(value)
    # dict / list
    if isinstance(value, str):
        try:
            value = _yaml(value)
        except yaml.YAMLError as e:
            raise bad(f"not valid YAML/JSON ({e.__class__.__name__})") from None
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, _KINDS[kind]):
        raise bad(f"write a {kind} in YAML/JSON syntax, e.g. "
                  + ('\'{"optim.lr": 1e-3}\'' if kind == "dict" else "'[1, 2]'"))
    return value


# ------------------------------------------------------------------------------------- grids and run ids
def expand_grid(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, the first key varying slowest. ``{}`` gives one empty run."""
    for k, vs in grid.items():
        if not isinstance(vs, (list, tuple)) or not vs:
            raise SweepError(f"grid key {k!r} needs a non-empty list of values, got {vs!r}")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _fmt(v) -> str:
    if isinstance(v, float):
        return repr(v)  # shortest text that reads back to the same float: 0.001, 1e-05
    if isinstance(v, (bool, int, str)) or v is None:
        return str(v)
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")


def run_id(combo: dict) -> str:
    """A readable, filesystem-safe folder name for one combination, e.g. ``lr=0.001__sn=True``.

    Keys are sorted so the id does not depend on the order of ``--grid`` options; it depends only on the
    combination itself, so growing a grid later never renames existing runs. When characters had to be
    replaced or the name was shortened, a hash of the exact values keeps it unique.
    """
    if not combo:
        return "default"
    raw = "__".join(f"{k}={_fmt(combo[k])}" for k in sorted(combo))
    safe = _UNSAFE.sub("-", raw)
    if safe == raw and len(raw) <= _MAX_ID:
        return raw
    digest = hashlib.sha1(json.dumps(combo, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{safe[:_MAX_ID - 10].rstrip('-_.=')}__{digest}"


def parse_grid_args(items: list[str] | None) -> dict[str, list[str]]:
    """``["lr=1e-3,1e-2", "sn=true,false"]`` -> ``{"lr": ["1e-3", "1e-2"], "sn": ["true", "false"]}``."""
    grid: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise SweepError(f"--grid {item!r}: expected KEY=V1,V2,... (values containing commas, such as "
                             f"dicts, go in a --grid-file)")
        if key in grid:
            raise SweepError(f"--grid {key} is given twice; list all its values in one option")
        grid[key] = [v.strip() for v in values.split(",")]
    return grid


def parse_param_args(items: list[str] | None) -> dict[str, str]:
    """``["seed=1", "overrides={a: 1}"]`` -> ``{"seed": "1", "overrides": "{a: 1}"}`` (split on the first =)."""
    params: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SweepError(f"-p {item!r}: expected KEY=VALUE")
        if key in params:
            raise SweepError(f"-p {key} is given twice")
        params[key] = value
    return params


def load_grid_file(path) -> tuple[dict[str, list], dict]:
    """Read a YAML or JSON grid file ``{grid: {key: [values]}, params: {key: value}}`` (module docstring)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SweepError(f"grid file {path}: {e.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else _yaml(text)
    except (ValueError, yaml.YAMLError) as e:
        raise SweepError(f"grid file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise SweepError(f"grid file {path}: expected a mapping with keys 'grid' and 'params'")
    extra = set(data) - {"grid", "params", "description"}
    if extra:
        bad = sorted(extra)[0]
        raise SweepError(f"grid file {path}: unknown top-level key {bad!r}{nearest(bad, ['grid', 'params'])} "
                         f"(allowed: grid, params, description)")
    grid, params = data.get("grid") or {}, data.get("params") or {}
    if not isinstance(grid, dict) or not isinstance(params, dict):
        raise SweepError(f"grid file {path}: 'grid' and 'params' must be mappings of parameter names")
    for k, vs in grid.items():
        if not isinstance(vs, list) or not vs:
            raise SweepError(f"grid file {path}: grid.{k} must be a non-empty list (a single fixed value "
                             f"belongs under params)")
    return {str(k): list(v) for k, v in grid.items()}, {str(k): v for k, v in params.items()}


def merge_settings(grid: dict, params: dict, cli_grid: dict, cli_params: dict) -> tuple[dict, dict]:
    """Command-line settings over a grid file's: ``-p k=v`` pins an axis, ``--grid k=...`` replaces one."""
    grid, params = dict(grid), dict(params)
    for k, v in cli_params.items():
        grid.pop(k, None)
        params[k] = v
    for k, vs in cli_grid.items():
        params.pop(k, None)
        grid[k] = vs
    return grid, params

