"""Shared fixtures: the site, the real local Slurm cluster, a real hub with its proxy.

The cluster and hub tests run as their own users (``t-student1``, ...: the site file's demo users
with a prefix, in a test copy of the site file), on their own ports and state, so that they pass
beside a running ``make demo`` whose users have sessions open.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
# test the working tree (jobs use the copy `make install` put into the venv)
sys.path.insert(0, str(ROOT / "src"))

from hubtools import Hub  # noqa: E402

from aifactory.site import load_site  # noqa: E402

SITE_FILE = ROOT / "hub_config" / "site.yaml"
TEST_USER_PREFIX = "t-"
# one per checkout: several checkouts (git worktrees) may run their tests on this machine at once
TEST_SITE_FILE = Path("/tmp/aifactory-tests") / hashlib.sha256(str(ROOT).encode()).hexdigest()[:8] / "site.yaml"


def write_test_site() -> Path:
    """The site file with the demo users (and their groups) renamed for the tests."""
    raw = yaml.safe_load(SITE_FILE.read_text())
    raw["demo_users"] = {TEST_USER_PREFIX + name: spec for name, spec in raw["demo_users"].items()}
    raw["groups"] = {group: [TEST_USER_PREFIX + u for u in users] for group, users in raw["groups"].items()}
    raw["courses_dir"] = str(ROOT / "courses")
    if "data" in raw:  # the registry sits beside the site file: the copy names the checkout's
        raw["data"]["registry"] = str(ROOT / "hub_config" / raw["data"].get("registry", "datasets.yaml"))
    if "usage" in raw:
        raw["usage"]["managers"] = {TEST_USER_PREFIX + user: accounts
                                    for user, accounts in raw["usage"].get("managers", {}).items()}
    TEST_SITE_FILE.parent.mkdir(parents=True, exist_ok=True)
    TEST_SITE_FILE.write_text(yaml.safe_dump(raw, sort_keys=False))
    return TEST_SITE_FILE


HUB_SITE_FILE = write_test_site()


@pytest.fixture(scope="session")
def site():
    return load_site(SITE_FILE)


@pytest.fixture(scope="session")
def slurm_cluster(site):
    """The real local cluster (`make cluster`), started here if it is not running, with the test users."""
    if os.geteuid() != 0:
        pytest.fail("the Slurm tests run as root (they start the local cluster and use sudo -u USER)")
    from aifactory.slurm import localcluster

    if not all(localcluster.status().values()):
        localcluster.start(site)
    test_site = load_site(HUB_SITE_FILE)
    localcluster.create_demo_users(test_site)
    localcluster.configure_accounting(test_site)
    return test_site


@pytest.fixture(scope="session")
def hub(slurm_cluster, tmp_path_factory):
    """A real JupyterHub + configurable-http-proxy on test ports, with short poll intervals."""
    state = tmp_path_factory.mktemp("hub")
    hub = Hub(state, HUB_SITE_FILE)
    hub.start()
    yield hub
    hub.stop_all_servers()
    hub.stop()


@pytest.fixture
def clean_hub(hub):
    """The hub, with every test user's servers stopped after the test."""
    yield hub
    hub.stop_all_servers()
    subprocess.run(["scancel", "--name=aifactory-test-blocker"], check=False)


@pytest.fixture
def blocker():
    """Occupy GPUs with plain sbatch jobs of another user (cancelled after the test)."""
    jobs = []

    def occupy(user: str, gres: str, qos: str = "interactive") -> str | None:
        """Occupy every free GPU of a type (`gpu:a100:2`): a demo's sessions may hold some already."""
        import asyncio

        from aifactory.slurm import queries as slurm

        gpu_type = gres.split(":")[1]
        free = asyncio.run(slurm.gpu_availability())[0][gpu_type].free
        if not free:
            return None
        gres = f"gpu:{gpu_type}:{free}"
        out = subprocess.run(
            ["sudo", "-u", user, "sbatch", "--parsable", "--job-name=aifactory-test-blocker",
             f"--gres={gres}", f"--qos={qos}", "--mem=256M", "--time=00:10:00", "--chdir=/tmp",
             "--output=/dev/null", "--wrap", "sleep 600"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        jobs.append(out)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = subprocess.run(["squeue", "-h", "-j", out, "-o", "%T"], capture_output=True, text=True).stdout
            if "RUNNING" in state:
                return out
            time.sleep(0.5)
        raise AssertionError(f"blocker job {out} did not start: {state}")

    yield occupy
    if jobs:
        subprocess.run(["scancel", *jobs], check=False)


def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Debian's chromium is not installed (make install installs it)")
    return path


def pytest_terminal_summary(terminalreporter):
    from test_notebooks import TIMES

    if not TIMES:
        return
    terminalreporter.section("notebook times (papermill, small parameters)")
    for name, seconds in sorted(TIMES.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{seconds:7.1f} s  {name}")
    terminalreporter.write_line(f"{sum(TIMES.values()):7.1f} s  total for {len(TIMES)} notebooks")
