"""Fuzz: 500 generated option sets through the REST API and the options form of a real hub.

A counting wrapper in front of ``sbatch`` (the users' own, through the hub's sudo prefix)
records every batch script that reaches Slurm: refused input never reaches it, and every
script holds only allow-listed ``#SBATCH`` lines.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests
from conftest import HUB_SITE_FILE
from hubtools import Hub
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aifactory.hub.options import OPTION_KEYS

pytestmark = [pytest.mark.slurm, pytest.mark.hub, pytest.mark.slow]

USER = "t-student1"
EXAMPLES = 250  # per path: 500 in all
ALLOWED_SBATCH = [re.compile(p) for p in (
    r"--job-name=jupyter(-[a-z0-9-]+)?", r"--no-requeue", r"--comment=aifactory-hub:[0-9a-f]{12}", r"--signal=URG@300",
    r"--output=/home/[\w.-]+/\.aifactory-session-%j\.log",
    r"--chdir=/home/[\w.-]+", r"--export=[A-Za-z_,]+", r"--partition=(gpu|cpu)",
    r"--account=(uni-teaching)", r"--qos=(workshop|interactive)", r"--time=\d\d:\d\d:00",
    r"--cpus-per-task=[1-8]", r"--mem=([1-9]|1[0-6])G", r"--gres=(gpu|shard)(:(h100|a100))?:[1-4]",
)]

names = st.sampled_from(["gpu", "cpu", "uni-teaching", "uni-research", "regional-health", "workshop",
                         "interactive", "normal", "h100", "a100", "any", "v100", "ws-nope", "ml-foundations",
                         "deep-learning-pytorch", "1", "2", "0"])
nasty = st.sampled_from(["gpu\n#SBATCH --uid=0", "; rm -rf ~", "$(id)", "`id`", "a|b", "gpu --uid=0", "#SBATCH",
                         "../../etc/passwd", "x" * 300, "é", "\x00", " ", "1e9", "0x10", "-1", "99999999"])
# any character a client can send (lone surrogates cannot be encoded as UTF-8 at all)
chars = st.characters(blacklist_categories=("Cs",))
texts = st.one_of(names, nasty, st.text(chars, max_size=12))
values = st.one_of(texts, st.integers(-10**12, 10**12), st.integers(0, 9),
                   st.floats(allow_nan=False, allow_infinity=False),  # what JSON can carry
                   st.booleans(), st.none(), st.lists(st.integers(0, 3), max_size=2))
keys = st.one_of(st.sampled_from(OPTION_KEYS), st.sampled_from(["cmd", "homedir", "prologue", "exec_prefix"]),
                 st.text(chars, min_size=1, max_size=40))
option_sets = st.dictionaries(keys, values, max_size=6)


@pytest.fixture(scope="module")
def fuzz_hub(slurm_cluster):
    """A hub whose users' sbatch goes through a wrapper that keeps every script it submits."""
    # the wrapper runs as the user (through sudo): its folders must be reachable from /tmp down
    root = Path(tempfile.mkdtemp(prefix="aif-fuzz-", dir="/tmp"))
    root.chmod(0o755)
    scripts = root / "scripts"
    scripts.mkdir(mode=0o777)
    scripts.chmod(0o1777)  # the wrapper runs as the user
    wrapper = root / "bin" / "sbatch"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nscript=$(mktemp {scripts}/sbatch.XXXXXX)\ncat > "$script"\n'
                       f'exec /usr/bin/sbatch "$@" < "$script"\n')
    wrapper.chmod(0o755)
    wrapper.parent.chmod(0o755)
    state = root / "hub"
    state.mkdir(mode=0o700)
    hub = Hub(state, HUB_SITE_FILE, port=18700, extra_args=[
        "--AIFactorySpawner.cmd=/opt/aifactory/venv/bin/aifactory-standin",
        f"--AIFactorySpawner.exec_prefix=sudo -E -u {{username}} env PATH={wrapper.parent}:/usr/bin:/bin"])
    hub.start()
    hub.scripts = scripts
    hub.accepted = 0
    yield hub
    hub.stop_all_servers()
    hub.stop()
    shutil.rmtree(root, ignore_errors=True)


def _stop(hub: Hub, name: str) -> None:
    # let an accepted start reach sbatch first: a stop while the start is still under way (a busy
    # machine answers 202 before the job is submitted) would cancel it before its script exists
    deadline = time.monotonic() + 60
    while (server := hub.server(USER, name)) is not None and server.get("pending") == "spawn" \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    hub.api(USER, "DELETE", f"/users/{USER}/servers/{name}")
    deadline = time.monotonic() + 60
    while hub.server(USER, name) is not None and time.monotonic() < deadline:
        time.sleep(0.2)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(options=option_sets)
def test_fuzz_rest_api(fuzz_hub, options):
    r = fuzz_hub.spawn(USER, options, name="fuzz")
    assert r.status_code in (201, 202, 400, 413), (options, r.status_code, r.text[:300])
    if r.status_code in (201, 202):
        fuzz_hub.accepted += 1
        _stop(fuzz_hub, "fuzz")
    else:
        assert len(r.text) < 2000  # short, whatever came in


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(options=option_sets)
def test_fuzz_options_form(fuzz_hub, options):
    if not hasattr(fuzz_hub, "browser"):
        fuzz_hub.browser = fuzz_hub.login(USER)
    form = {str(k): "" if v is None else str(v) for k, v in options.items()}
    try:
        r = fuzz_hub.browser.post(f"{fuzz_hub.url}/hub/spawn/{USER}/fuzzf", timeout=60, allow_redirects=False,
                                  data={**form, "_xsrf": fuzz_hub.browser.xsrf})
    except requests.RequestException as e:  # a body the hub refuses to read at all
        pytest.fail(f"{form!r}: {e}")
    assert r.status_code in (200, 302, 400, 413), (form, r.status_code)
    if r.status_code == 302 and "spawn-pending" in r.headers.get("Location", ""):
        fuzz_hub.accepted += 1
        _stop(fuzz_hub, "fuzzf")


def test_only_accepted_options_reached_sbatch_with_allow_listed_lines(fuzz_hub):
    scripts = sorted(fuzz_hub.scripts.glob("sbatch.*"))
    assert len(scripts) == fuzz_hub.accepted, (len(scripts), fuzz_hub.accepted)
    for script in scripts:
        for line in Path(script).read_text().splitlines():
            if line.startswith("#SBATCH"):
                option = line.removeprefix("#SBATCH ")
                assert any(p.fullmatch(option) for p in ALLOWED_SBATCH), (script.name, line)
    subprocess.run(["scancel", "-u", USER, "-n", "jupyter-fuzz,jupyter-fuzzf"], capture_output=True)
