"""The batch script of a run: a pure function of validated options and values we control.

The resource lines are the sessions' own (``hub.batchscript.resource_directives``), from
``SessionOptions`` that passed ``hub.options.validate``; the paths are checked with the same
allow-lists as the sessions' script. A run is always a job array (one task per parameter set).
"""

from __future__ import annotations

from aifactory.hub.batchscript import JOB_NAME_RE, PATH_RE, resource_directives
from aifactory.hub.options import SessionOptions
from aifactory.slurm.usage import RUN_JOB_PREFIX

# the usage figures label jobs by this name as batch runs
JOB_NAME_PREFIX = RUN_JOB_PREFIX + "-"


def job_name(run_id: str) -> str:
    name = (JOB_NAME_PREFIX + run_id)[:64]
    if not JOB_NAME_RE.match(name):
        raise ValueError(f"job name {name!r} is not allowed")
    return name


def array_spec(tasks: int, throttle: int) -> str:
    """``0-N`` with ``%throttle`` when more tasks than the throttle would run at once."""
    if tasks < 1:
        raise ValueError("a run needs at least one task")
    return f"0-{tasks - 1}" + (f"%{throttle}" if tasks > throttle else "")


def render(options: SessionOptions, run_id: str, run_dir: str, tasks: int, throttle: int,
           venv: str = "/opt/aifactory/venv") -> str:
    """The script ``sbatch`` reads on stdin. Raises ValueError on unsafe paths."""
    for what, path in (("run folder", run_dir), ("venv", venv)):
        if not PATH_RE.match(path):
            raise ValueError(f"{what} {path!r} has characters a batch script cannot take")
    return (
        "#!/bin/bash\n"
        f"#SBATCH --job-name={job_name(run_id)}\n"
        f"#SBATCH --output={run_dir}/task-%a.log\n"
        f"#SBATCH --chdir={run_dir}\n"
        f"#SBATCH --array={array_spec(tasks, throttle)}\n"
        f"{resource_directives(options)}"
        "\n"
        "set -euo pipefail\n"
        "# private by default: executed notebooks, records and logs are the user's alone\n"
        "umask 077\n"
        f'chmod 600 "{run_dir}/task-$SLURM_ARRAY_TASK_ID.log" 2>/dev/null || true\n'
        f"exec {venv}/bin/python -m aifactory.runs.job {run_dir}\n"
    )
