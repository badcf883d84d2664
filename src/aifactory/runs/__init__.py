"""Batch runs of notebooks: papermill inside a Slurm job array, one task per parameter set.

    from aifactory import runs
    run = runs.submit("train.ipynb", sweep={"LR": [0.1, 0.01, 0.001]}, resources={"partition": "cpu"})
    runs.wait(run.run_id)
    rows = runs.collect(run.run_id)   # parameters + the notebook's `results` dict, one row per task

See ``api`` for the functions, ``notebook`` for the conventions, ``cli`` for ``aifactory submit``.
"""

from aifactory.runs.api import Run, RunError, Task, cancel, collect, runs, show, submit, wait
from aifactory.runs.notebook import RunInputError

__all__ = ["Run", "RunError", "RunInputError", "Task", "cancel", "collect", "runs", "show", "submit", "wait"]
