"""Wall-time warning inside a session: before Slurm ends the job, JupyterLab saves the open notebooks
and tells the user.

How the warning travels (each step is a real mechanism, no polling of Slurm):

1. The batch script asks Slurm for ``--signal=URG@SECONDS`` (``spawn.walltime_warning_minutes``
   of the site file). Slurm sends it to every process of the job's steps (the ``srun`` that runs
   the server: the server, its kernels, terminals), not to the batch shell. SIGURG because its
   default action is to ignore it: USR1, forwarded the same way, ends the kernels five minutes early
   (verified on the local cluster), and the server does not need a trap in the batch shell.
2. The single-user server loads :mod:`aifactory.walltime.extension` (a ``jupyter_server``
   extension, enabled on its command line by :func:`singleuser_args`). On URG it reads the job's
   end time from ``squeue`` and emits a ``jupyter_server`` event (and keeps it for ``GET
   /aifactory/walltime``).
3. JupyterLab's document models live in the browser, so saving must happen there: a small
   JupyterLab plugin (``labextensions/aifactory-walltime``, plain JavaScript in the shape of a
   prebuilt "federated" extension, so no npm/webpack build is needed) listens to the server's event
   stream, runs ``docmanager:save-all`` and shows a notification that stays until dismissed.
   It also asks ``/aifactory/walltime`` when it starts and when its tab becomes visible again, for
   a warning that came while no lab page was connected.
"""

from __future__ import annotations

from pathlib import Path

EXTENSION_MODULE = "aifactory.walltime.extension"
LABEXTENSIONS_DIR = Path(__file__).resolve().parent / "labextensions"
SCHEMA_ID = "https://events.aifactory.example/walltime-warning/v1"
STATE_PATH = "aifactory/walltime"  # under the server's base URL


def singleuser_args() -> list[str]:
    """Command-line arguments that load the wall-time warning into a single-user server.

    The folder is where the hub imports this package from: the jobs' nodes share the software
    (one venv), so the server finds the plugin at the same path.
    """
    return [f"--ServerApp.jpserver_extensions={EXTENSION_MODULE}=True",
            f"--LabApp.extra_labextensions_path={LABEXTENSIONS_DIR}"]


def _jupyter_server_extension_points():
    return [{"module": EXTENSION_MODULE}]
