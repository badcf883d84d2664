"""Worked solutions of the notebook exercises, extracted so that `make test` executes them.

An exercise's solution lives in a markdown cell, inside
``<details><summary>Show solution</summary> ... </details>``, as one or more fenced ``python``
blocks (courses/README.md). ``with_solutions`` returns a copy of the notebook with each solution
as a code cell tagged ``solution`` right after the markdown cell that holds it, so it runs after
the notebook's preceding code, with its assertions, in the same papermill run as the notebook.
"""

from __future__ import annotations

import copy
import re

DETAILS_RE = re.compile(r"<details>\s*<summary>\s*Show solution\s*</summary>(.*?)</details>", re.S | re.I)
CODE_RE = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)
SOLUTION_TAG = "solution"


def solutions(notebook) -> list[tuple[int, str]]:
    """(index of the markdown cell, code) for every python block of every solution, in order."""
    found = []
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        for details in DETAILS_RE.findall(source):
            found += [(index, code.strip("\n")) for code in CODE_RE.findall(details)]
    return found


def exercises(notebook) -> list[int]:
    """Indexes of markdown cells that set an exercise (a heading containing 'Exercise')."""
    heading = re.compile(r"^#+ .*\bExercise", re.M)
    return [i for i, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "markdown"
            and heading.search(cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"]))]


def with_solutions(notebook):
    """A copy of ``notebook`` with every solution inserted as a code cell after its markdown cell."""
    result = copy.deepcopy(notebook)
    for offset, (index, code) in enumerate(solutions(notebook)):
        cell = {"cell_type": "code", "execution_count": None, "id": f"solution-{offset}",
                "metadata": {"tags": [SOLUTION_TAG], "solution_of_cell": index}, "outputs": [],
                "source": code}
        result["cells"].insert(index + 1 + offset, cell)
    return result
