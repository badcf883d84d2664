"""The session panel: ``from aifactory.widgets import panel; panel()`` in a notebook of a session.

It shows the session's own Slurm job (id, partition, account, QOS, node, GPUs) and the wall time
left, ticking down to the job's end time. The facts come from ``squeue`` (through
:mod:`aifactory.slurm.queries`) and the kernel's environment (``SLURM_JOB_ID``,
``CUDA_VISIBLE_DEVICES``, which the kernel inherits from the job); GPU figures from ``nvidia-smi``
where the node has it.

Below it, the "Batch runs" section (:mod:`aifactory.runs.panel`): submit this notebook as a batch
run or a sweep, follow and cancel your runs, plot a sweep's results. It uses ``aifactory.runs``;
``panel(batch_runs=...)`` takes another implementation of its ``BatchRuns`` protocol.
Outside a Slurm job (a notebook run by papermill, a plain Jupyter) the panel says there is no
session to show; the runs section still lists and submits runs where Slurm answers.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from datetime import datetime

import ipywidgets as widgets

from aifactory.runs.api import run_sync
from aifactory.runs.panel import BatchRuns, BatchRunsSection, current_notebook
from aifactory.slurm import queries
from aifactory.slurm.standing import describe_standing, user_standing

NVIDIA_SMI_QUERY = "index,name,memory.used,memory.total,utilization.gpu"
NO_NVIDIA_SMI = "nvidia-smi is not available on this node: no GPU figures"
GRES_RE = re.compile(r"(?<![\w])(?P<kind>gpu|shard)(?::(?P<type>[A-Za-z][\w.-]*))?:(?P<count>\d+)")


# ---------------------------------------------------------------- facts


@dataclass(frozen=True)
class GpuFigures:
    index: str
    name: str
    memory_used_mib: int
    memory_total_mib: int
    utilization_percent: int


def parse_nvidia_smi(csv_text: str) -> list[GpuFigures]:
    """``nvidia-smi --query-gpu=NVIDIA_SMI_QUERY --format=csv,noheader,nounits``."""
    gpus = []
    for line in csv_text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5:
            continue
        index, name, used, total, utilization = parts

        def number(text: str) -> int:
            return int(text) if text.isdigit() else -1  # "[N/A]" on some GPUs (MIG)

        gpus.append(GpuFigures(index, name, number(used), number(total), number(utilization)))
    return gpus


def nvidia_smi() -> list[GpuFigures] | None:
    """The node's GPU figures; None where there is no nvidia-smi (or it fails)."""
    command = shutil.which("nvidia-smi")
    if not command:
        return None
    try:
        out = subprocess.run([command, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=15, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(out)


def describe_gres(gres: str, cuda_visible_devices: str) -> str:
    """``gres:gpu:h100:1`` and ``CUDA_VISIBLE_DEVICES=0`` -> ``1 × h100 (CUDA_VISIBLE_DEVICES=0)``."""
    items = []
    for m in GRES_RE.finditer(gres):
        count, kind = int(m["count"]), m["type"] or "any type"
        items.append(f"{count} × {kind}" if m["kind"] == "gpu" else f"{count} GPU slice(s) of {kind}")
    if not items:
        return "none"
    return f"{', '.join(items)} (CUDA_VISIBLE_DEVICES={cuda_visible_devices or 'unset'})"


def format_time_left(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


# ---------------------------------------------------------------- the panel


class SessionPanel:
    """The widgets; ``fields`` holds each value's widget by name (what the tests read)."""

    FIELDS = (("job_id", "Job"), ("partition", "Partition"), ("account", "Account"), ("qos", "QOS"),
              ("nodes", "Node"), ("gpus", "GPUs"), ("time_left", "Wall time left"), ("end_time", "Ends at"),
              ("standing", "Account standing"))

    def __init__(self, batch_runs: BatchRuns | None = None, environ: dict | None = None, tick_seconds: float = 1.0,
                 site=None, refresh_seconds: float = 5.0):
        self.environ = os.environ if environ is None else environ
        self.site, self.site_error = _load_site(site)
        self.tick_seconds = tick_seconds
        self.end_time: datetime | None = None
        self.job = None
        self.fields = {name: widgets.Label(value="") for name, _ in self.FIELDS}
        self.fields["gpu_figures"] = widgets.HTML(value="")
        self.message = widgets.HTML(value="")
        rows = [widgets.HBox([widgets.Label(value=title, layout=widgets.Layout(width="9em")), self.fields[name]])
                for name, title in self.FIELDS]
        refresh = widgets.Button(description="Refresh", tooltip="read the job and the GPUs again")
        refresh.on_click(lambda _: self.refresh())
        self._stop = threading.Event()
        self.refresh()
        self.runs: BatchRunsSection | None = None
        self.runs_section = self._batch_runs_section(batch_runs, site, refresh_seconds)
        self.widget = widgets.VBox([widgets.HTML(value="<b>This session</b>"), self.message, *rows,
                                    self.fields["gpu_figures"], refresh, self.runs_section])
        if self.end_time is not None:
            threading.Thread(target=self._tick, name="aifactory-panel-clock", daemon=True).start()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def close(self) -> None:
        self._stop.set()
        if self.runs:
            self.runs.close()
        self.widget.close()

    def values(self) -> dict[str, str]:
        return {name: widget.value for name, widget in self.fields.items()}

    def refresh(self) -> None:
        """Read the job (squeue) and the GPUs (nvidia-smi) again."""
        job_id = self.environ.get("SLURM_JOB_ID", "")
        job = None
        if not job_id:
            self.message.value = "This kernel does not run in a Slurm job: no session to show."
        else:
            try:
                job = run_sync(queries.session_job(job_id))
                self.message.value = "" if job else f"Slurm no longer lists job {html.escape(job_id)}."
            except (queries.SlurmUnavailable, queries.SlurmCommandError, ValueError) as e:
                self.message.value = f"Slurm did not answer: {html.escape(str(e))}"
        cuda = self.environ.get("CUDA_VISIBLE_DEVICES", "")
        values = {name: "" for name, _ in self.FIELDS}
        if job:
            values.update(job_id=job.job_id, partition=job.partition, account=job.account, qos=job.qos or "-",
                          nodes=job.nodes, gpus=describe_gres(job.gres, cuda),
                          end_time=f"{job.end_time:%Y-%m-%d %H:%M:%S}" if job.end_time else "unknown")
            self.end_time = job.end_time
        self.job = job
        if job and self.site is not None:
            values["standing"] = self._standing(job.account)
        for name, value in values.items():
            self.fields[name].value = value
        self._show_time_left()
        self.fields["gpu_figures"].value = self._gpu_table(nvidia_smi())

    def _standing(self, account: str) -> str:
        """The session's account: shares, the user's fair-share factor, GPU-hours this month (the
        spawn form shows the same)."""
        user = self.environ.get("USER") or self.environ.get("JUPYTERHUB_USER") or ""
        try:
            standing = run_sync(user_standing(user, [account], self.site)).get(account)
        except (queries.SlurmUnavailable, queries.SlurmCommandError, ValueError) as e:
            return f"Slurm did not answer: {e}"
        return describe_standing(standing, self.site) if standing else "unknown"

    def _show_time_left(self) -> None:
        if self.end_time is not None:
            self.fields["time_left"].value = format_time_left((self.end_time - datetime.now()).total_seconds())

    def _tick(self) -> None:
        # a thread, not a task of the kernel's loop: the clock goes on while a cell runs
        while not self._stop.wait(self.tick_seconds):
            self._show_time_left()

    @staticmethod
    def _gpu_table(gpus: list[GpuFigures] | None) -> str:
        if gpus is None:
            return html.escape(NO_NVIDIA_SMI)
        if not gpus:
            return "nvidia-smi lists no GPUs for this session"
        rows = "".join(
            f"<tr><td>{html.escape(g.index)}</td><td>{html.escape(g.name)}</td>"
            f"<td>{g.memory_used_mib} / {g.memory_total_mib} MiB</td><td>{g.utilization_percent} %</td></tr>"
            for g in gpus)
        return ("<table><tr><th>GPU</th><th>Model</th><th>Memory used</th><th>Utilisation</th></tr>"
                f"{rows}</table>")

    # ------------------------------------------------------------ batch runs

    def _batch_runs_section(self, batch_runs: BatchRuns | None, site, refresh_seconds: float) -> widgets.Widget:
        site = self.site
        if site is None:
            return widgets.HTML(value=f"<b>Batch runs</b><br>The site file cannot be read: "
                                      f"{html.escape(self.site_error)}")
        if batch_runs is None:
            from aifactory import runs as batch_runs
        defaults = {}
        if self.job:
            # a batch run of this notebook asks for what its session has, by default
            gpus = sum(int(m["count"]) for m in GRES_RE.finditer(self.job.gres) if m["kind"] == "gpu")
            defaults = {"partition": self.job.partition, "gpus": gpus, "account": self.job.account}
        ipython = _ipython()
        self.runs = BatchRunsSection(
            batch_runs, site, notebook=current_notebook(self.environ, ipython and (lambda: ipython.user_ns)),
            defaults=defaults, refresh_seconds=refresh_seconds)
        return self.runs.widget


def _load_site(site):
    """The site file as jobs see it (the published copy), or why it cannot be read."""
    if site is not None:
        return site, ""
    from aifactory.cli import default_site
    from aifactory.site import SiteError, load_site

    try:
        return load_site(default_site()), ""
    except (SiteError, OSError) as e:
        return None, str(e)


def _ipython():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def panel(batch_runs: BatchRuns | None = None) -> SessionPanel:
    """The session panel for this kernel's Slurm job; the last expression of a cell shows it.

    ``batch_runs``: where the "Batch runs" section submits and lists runs (default: ``aifactory.runs``).
    """
    return SessionPanel(batch_runs)
