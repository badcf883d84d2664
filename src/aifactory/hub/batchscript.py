"""What goes into the batch script: a pure function of validated options.

The spawner only passes ``SessionOptions`` (already validated) and values the hub itself
controls (paths, the single-user command). Nothing here reads ``user_options``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from jinja2 import Environment, StrictUndefined

from aifactory.hub.options import SessionOptions

PATH_RE = re.compile(r"^/[A-Za-z0-9_./-]*$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
JOB_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
HUB_TAG_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_SIGNAL_SECONDS = 65535  # sbatch --signal's limit

# --no-requeue: a session cannot resume on another node after a node failure (its lab, port and
# token are gone); requeued, it would come back as a second server the hub did not ask for
TEMPLATE = """\
#!/bin/bash
#SBATCH --job-name={{ job_name }}
#SBATCH --no-requeue
{% if hub_tag %}#SBATCH --comment={{ hub_tag }}
{% endif %}#SBATCH --output={{ homedir }}/.aifactory-session-%j.log
#SBATCH --chdir={{ homedir }}
#SBATCH --export={{ keepvars }}
{{ resources }}{% if walltime_warning_seconds %}#SBATCH --signal=URG@{{ walltime_warning_seconds }}
{% endif %}
set -euo pipefail
# private by default: course copies, notebooks and the session log are the user's alone
# (slurmd creates the log before this line runs, so it is tightened explicitly)
umask 077
chmod 600 "{{ homedir }}/.aifactory-session-$SLURM_JOB_ID.log" 2>/dev/null || true
trap 'echo SIGTERM received' TERM
echo "AI factory session: job $SLURM_JOB_ID on $(hostname) started $(date +%s.%N), GPUs: ${CUDA_VISIBLE_DEVICES:-none}"
{% if course_sync %}{{ course_sync }} || echo "course copy failed; your earlier files are unchanged"
{% endif %}{{ srun }}{{ cmd }}
echo "jupyterhub-singleuser ended gracefully"
"""

def resource_directives(options: SessionOptions) -> str:
    """The ``#SBATCH`` lines of the resources: sessions and batch runs share them.

    Only ``SessionOptions`` (the output of ``options.validate``) reach these lines.
    """
    lines = [f"--partition={options.partition}", f"--account={options.account}"]
    if options.qos:
        lines.append(f"--qos={options.qos}")
    lines += [f"--time={options.time_limit}", f"--cpus-per-task={options.cpus}", f"--mem={options.memory_gb}G"]
    if options.gres:
        lines.append(f"--gres={options.gres}")
    if options.reservation:
        lines.append(f"--reservation={options.reservation}")
    return "".join(f"#SBATCH {line}\n" for line in lines)


_template = Environment(undefined=StrictUndefined, keep_trailing_newline=True).from_string(TEMPLATE)


@dataclass(frozen=True)
class JobContext:
    """Values the hub controls (not the user)."""

    username: str
    homedir: str
    cmd: str  # the single-user command line, built by the spawner
    keepvars: list[str]
    job_name: str = "jupyterhub"
    srun: str = "srun"
    venv: str = "/opt/aifactory/venv"
    site_file: str = ""
    # the job's comment: which hub started it (the hub's reconcile finds its jobs by it)
    hub_tag: str = ""
    # Slurm sends the session's processes SIGURG this long before the time limit (0: no warning):
    # URG because every process of the step gets it (proctrack), and URG is ignored by default
    # where USR1 would end the kernels; the server's aifactory.walltime extension takes it
    walltime_warning_seconds: int = 0


def _check(ctx: JobContext) -> None:
    if not PATH_RE.match(ctx.homedir):
        raise ValueError(f"home directory {ctx.homedir!r} has characters a batch script cannot take")
    if not PATH_RE.match(ctx.venv) or (ctx.site_file and not PATH_RE.match(ctx.site_file)):
        raise ValueError("venv and site file must be plain absolute paths")
    if not JOB_NAME_RE.match(ctx.job_name):
        raise ValueError(f"job name {ctx.job_name!r} is not allowed")
    if ctx.hub_tag and not HUB_TAG_RE.match(ctx.hub_tag):
        raise ValueError(f"hub tag {ctx.hub_tag!r} is not allowed")
    bad = [name for name in ctx.keepvars if not ENV_NAME_RE.match(name)]
    if bad:
        raise ValueError(f"environment variable names not allowed: {bad}")
    if not 0 <= ctx.walltime_warning_seconds <= MAX_SIGNAL_SECONDS:
        raise ValueError(f"wall-time warning of {ctx.walltime_warning_seconds} s is outside 0..{MAX_SIGNAL_SECONDS}")
    if "\n" in ctx.cmd:
        raise ValueError("the single-user command must be one line")


def course_sync_command(options: SessionOptions, ctx: JobContext) -> str:
    if not options.course:
        return ""
    site = f" --site {shlex.quote(ctx.site_file)}" if ctx.site_file else ""
    return f"{ctx.venv}/bin/aifactory{site} courses sync {shlex.quote(options.course)}"


def render(options: SessionOptions, ctx: JobContext) -> str:
    """The batch script for a session. Raises ValueError on hub-side values that are unsafe."""
    _check(ctx)
    return _template.render(
        resources=resource_directives(options),
        job_name=ctx.job_name,
        hub_tag=ctx.hub_tag,
        homedir=ctx.homedir,
        keepvars=",".join(ctx.keepvars),
        course_sync=course_sync_command(options, ctx),
        srun=f"{ctx.srun} " if ctx.srun else "",
        cmd=ctx.cmd,
        walltime_warning_seconds=walltime_warning_seconds(options, ctx),
    )


def walltime_warning_seconds(options: SessionOptions, ctx: JobContext) -> int:
    """The warning lead, or 0 where it cannot work.

    Slurm sends it to the job's steps, not to the batch shell's processes: without ``srun`` the
    server would not get it. A session no longer than the lead would be signalled at its start,
    before the server takes the signal.
    """
    limit_seconds = (options.minutes or options.hours * 60) * 60
    if not ctx.srun or limit_seconds <= ctx.walltime_warning_seconds:
        return 0
    return ctx.walltime_warning_seconds
