"""The batch script is a pure function of validated options and hub-controlled values."""

from __future__ import annotations

import pytest

from aifactory.hub.batchscript import JobContext, render
from aifactory.hub.options import SessionOptions

CTX = JobContext(username="student1", homedir="/home/student1",
                 cmd="/opt/aifactory/venv/bin/batchspawner-singleuser /opt/aifactory/venv/bin/jupyterhub-singleuser",
                 keepvars=["JUPYTERHUB_API_TOKEN", "PATH"], site_file="/opt/aifactory/published/site.yaml")


def options(**changes):
    base = dict(partition="gpu", account="uni-teaching", qos="workshop", gpu_type="h100", gpus=1,
                cpus=2, memory_gb=4, hours=2)
    base.update(changes)
    return SessionOptions(**base)


def directives(script):
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def test_directives_come_from_the_validated_options():
    script = render(options(reservation="workshop-ml"), CTX)
    assert directives(script) == [
        "#SBATCH --job-name=jupyterhub",
        "#SBATCH --no-requeue",
        "#SBATCH --output=/home/student1/.aifactory-session-%j.log",
        "#SBATCH --chdir=/home/student1",
        "#SBATCH --export=JUPYTERHUB_API_TOKEN,PATH",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=uni-teaching",
        "#SBATCH --qos=workshop",
        "#SBATCH --time=02:00:00",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --mem=4G",
        "#SBATCH --gres=gpu:h100:1",
        "#SBATCH --reservation=workshop-ml",
    ]
    assert script.rstrip().endswith('echo "jupyterhub-singleuser ended gracefully"')
    assert f"srun {CTX.cmd}" in script


def test_the_hub_tag_is_the_jobs_comment_and_nothing_else_gets_there():
    from dataclasses import replace

    tagged = render(options(), replace(CTX, hub_tag="aifactory-hub:0123456789ab"))
    assert "#SBATCH --comment=aifactory-hub:0123456789ab" in directives(tagged)
    assert not any("--comment" in d for d in directives(render(options(), CTX)))
    with pytest.raises(ValueError, match="hub tag"):
        render(options(), replace(CTX, hub_tag="x\n#SBATCH --uid=0"))


def test_no_gpu_no_gres_and_any_type():
    assert not any("--gres" in d for d in directives(render(options(gpus=0), CTX)))
    assert "#SBATCH --gres=gpu:2" in render(options(gpus=2, gpu_type="any"), CTX)


def test_course_sessions_copy_the_course_first():
    script = render(options(course="ml-foundations"), CTX)
    sync = "/opt/aifactory/venv/bin/aifactory --site /opt/aifactory/published/site.yaml courses sync ml-foundations"
    assert sync in script
    assert script.index(sync) < script.index("srun ")


@pytest.mark.parametrize(
    "change",
    [
        {"homedir": "/home/x\n#SBATCH --uid=0"},
        {"homedir": "/home/$(id)"},
        {"job_name": "a b"},
        {"keepvars": ["PATH", "X;Y"]},
        {"cmd": "jupyterhub-singleuser\nrm -rf /"},
    ],
)
def test_unsafe_hub_side_values_are_refused(change):
    import dataclasses

    with pytest.raises(ValueError):
        render(options(), dataclasses.replace(CTX, **change))
