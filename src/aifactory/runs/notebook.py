"""What a run needs from a notebook, and what it reads back from an executed one (pure functions).

Conventions (README "Batch runs and sweeps"):

- parameters: the code cell tagged ``parameters`` assigns the names a run may set
  (``EPOCHS = 3``); papermill injects the overrides right after it;
- values: Python literals (``3``, ``0.1``, ``'cuda'``, ``[1, 2]``, ``True``, ``None``); a plain
  word such as ``cuda`` or ``resnet-18`` is taken as a string, so shells need no extra quotes;
- results: the code cell tagged ``results`` assigns a dict ``results = {...}`` of JSON-able
  values; the runner records it in the task's record.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import re
from pathlib import Path

PARAMETERS_TAG = "parameters"
RESULTS_TAG = "results"
RECORD_TAG = "aifactory-record-results"
RESULTS_MIMETYPE = "application/vnd.aifactory.results+json"
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
BARE_WORD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/+-]{0,127}$")
MAX_VALUE_CHARS = 256
MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024

# added after the `results` cell: displays the dict under our own mimetype, so the runner reads it
# back from the executed notebook without parsing printed text
RECORD_SOURCE = f"""\
# added by `aifactory submit`: records the dict `results` in the run's task record
import json as _aifactory_json
from IPython.display import display as _aifactory_display
_aifactory_display({{{RESULTS_MIMETYPE!r}: _aifactory_json.loads(_aifactory_json.dumps(dict(results), default=str))}},
                   raw=True)
"""


class RunInputError(ValueError):
    """Refused input of a run; ``item`` names what was wrong (a parameter, --sweep, the notebook)."""

    def __init__(self, item: str, message: str):
        self.item = item
        super().__init__(f"{item}: {message}")


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return source if isinstance(source, str) else "".join(source)


def _tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def load_notebook(path: Path) -> dict:
    """The notebook as JSON; RunInputError for a missing, unreadable or malformed file."""
    item = f"notebook {str(path)[:200]}"
    if path.suffix != ".ipynb":
        raise RunInputError(item, "is not a notebook (.ipynb)")
    try:
        if path.stat().st_size > MAX_NOTEBOOK_BYTES:
            raise RunInputError(item, f"is larger than {MAX_NOTEBOOK_BYTES // 2**20} MB")
        notebook = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunInputError(item, "does not exist") from None
    except PermissionError:
        raise RunInputError(item, "is not readable by you") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunInputError(item, f"cannot be read as a notebook ({e})") from None
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise RunInputError(item, "is not a Jupyter notebook (no cells)")
    return notebook


def defined_parameters(notebook: dict) -> dict[str, str] | None:
    """Names the ``parameters`` cell assigns, with their default's source; None without that cell."""
    cell = next((c for c in notebook["cells"] if c.get("cell_type") == "code" and PARAMETERS_TAG in _tags(c)),
                None)
    if cell is None:
        return None
    source = _source(cell)
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise RunInputError("parameters cell", f"is not valid Python ({e.msg}, line {e.lineno})") from None
    names = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            if isinstance(target, ast.Name):
                names[target.id] = ast.get_source_segment(source, node.value) or ""
    return names


def _json_value(value, item: str):
    """Python literals that a notebook and a JSON record both hold: no sets, bytes, complex."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RunInputError(item, f"{value} is not a finite number")
        return value
    if isinstance(value, list | tuple):
        return [_json_value(v, item) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json_value(v, item) for k, v in value.items()}
    raise RunInputError(item, f"{type(value).__name__} values are not supported (use numbers, strings, "
                              "True/False/None, lists or dicts with string keys)")


def parse_value(text: str, item: str):
    """A parameter value: a Python literal, or a plain word taken as a string."""
    if len(text) > MAX_VALUE_CHARS:
        raise RunInputError(item, f"the value is longer than {MAX_VALUE_CHARS} characters")
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        if not BARE_WORD_RE.match(text):
            raise RunInputError(item, f"{text[:60]!r} is not a Python literal (write strings in quotes, "
                                      "e.g. \"'two words'\")") from None
        return text
    return _json_value(value, item)


def parse_sweep(spec: str) -> tuple[str, list]:
    """``NAME=v1,v2,...``: the name and its values (``[1,2],[3]`` are two lists)."""
    name, sep, values_text = spec.partition("=")
    name = name.strip()
    if not sep or not NAME_RE.match(name):
        raise RunInputError(f"--sweep {spec[:60]!r}", "expected NAME=v1,v2,... with a Python name")
    item = f"--sweep {name}"
    if not values_text.strip():
        raise RunInputError(item, "has no values")
    if len(values_text) > MAX_VALUE_CHARS * 4:
        raise RunInputError(item, f"the values are longer than {MAX_VALUE_CHARS * 4} characters")
    try:
        values = ast.literal_eval(f"[{values_text}]")
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        values = [parse_value(v.strip(), item) if v.strip() else "" for v in values_text.split(",")]
    return name, sweep_values(name, values)


def sweep_values(name: str, values) -> list:
    """The values of one swept parameter: a non-empty list of distinct JSON-able values."""
    item = f"--sweep {str(name)[:64]}"
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise RunInputError(item, "is not a Python name")
    if not isinstance(values, list | tuple) or not values:
        raise RunInputError(item, "has no values")
    values = [_json_value(v, item) for v in values]
    if any(v == "" for v in values):
        raise RunInputError(item, "has an empty value")
    keys = [json.dumps(v, sort_keys=True) for v in values]
    if len(set(keys)) != len(keys):
        raise RunInputError(item, "lists a value twice")
    return values


def parameter_value(name: str, value) -> object:
    """A fixed parameter given from Python (the API): a Python name and a JSON-able value."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise RunInputError(f"parameter {str(name)[:64]!r}", "is not a Python name")
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        raise RunInputError(f"parameter {name}", f"the value is longer than {MAX_VALUE_CHARS} characters")
    return _json_value(value, f"parameter {name}")


def parameter_grid(fixed: dict, sweeps: list[tuple[str, list]], max_tasks: int) -> list[dict]:
    """One parameter dict per task: the cartesian product of the sweeps, each with the fixed values."""
    names = [name for name, _ in sweeps]
    for name in names:
        if names.count(name) > 1:
            raise RunInputError(f"--sweep {name}", "is given twice")
        if name in fixed:
            raise RunInputError(f"--sweep {name}", "is also given as a fixed parameter (-p)")
    count = math.prod(len(values) for _, values in sweeps)
    if count > max_tasks:
        raise RunInputError("--sweep", f"{count} combinations are more than the site allows in one run "
                                       f"({max_tasks})")
    return [{**fixed, **dict(zip(names, combination, strict=True))}
            for combination in itertools.product(*(values for _, values in sweeps))]


def check_parameters(notebook: dict, names: list[str]) -> None:
    """Every name must be assigned in the notebook's ``parameters`` cell."""
    if not names:
        return
    defined = defined_parameters(notebook)
    if defined is None:
        raise RunInputError("notebook", "has no cell tagged 'parameters' (tag the cell that assigns the "
                                        f"defaults; needed for {', '.join(sorted(names))})")
    for name in names:
        if name not in defined:
            raise RunInputError(f"parameter {name}", "is not assigned in the notebook's parameters cell "
                                                     f"(it defines: {', '.join(defined) or 'nothing'})")


def with_results_record(notebook: dict) -> dict:
    """A copy with the recording cell after the ``results`` cell (unchanged without one)."""
    cells = []
    for cell in notebook["cells"]:
        cells.append(cell)
        if cell.get("cell_type") == "code" and RESULTS_TAG in _tags(cell):
            cells.append({"cell_type": "code", "execution_count": None, "id": RECORD_TAG,
                          "metadata": {"tags": [RECORD_TAG]},
                          "outputs": [], "source": RECORD_SOURCE})
    return {**notebook, "cells": cells}


def recorded_results(executed: dict) -> dict | None:
    """The ``results`` dict the recording cell displayed, None when it did not run."""
    for cell in executed["cells"]:
        if RECORD_TAG in _tags(cell):
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                if RESULTS_MIMETYPE in data:
                    return data[RESULTS_MIMETYPE]
    return None


def failed_cell(executed: dict) -> dict | None:
    """Where an executed notebook failed: index among the submitted notebook's cells, first line, error."""
    index = 0
    for cell in executed["cells"]:
        tags = _tags(cell)
        if {"papermill-error-cell-tag", "injected-parameters", RECORD_TAG} & set(tags):
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                lines = [line for line in _source(cell).splitlines() if line.strip()]
                return {"index": index, "id": cell.get("id", ""),
                        "execution_count": cell.get("execution_count"),
                        "first_line": lines[0][:120] if lines else "",
                        "error": f"{output.get('ename', '')}: {output.get('evalue', '')}"[:500]}
        index += 1
    return None


def kernel_name(notebook: dict) -> str:
    name = notebook.get("metadata", {}).get("kernelspec", {}).get("name") or "python3"
    return name if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) else "python3"
