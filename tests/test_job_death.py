"""A job that dies before JupyterLab is up is reported with its state and log, not waited on."""

from __future__ import annotations

import re
import time

import pytest
from conftest import HUB_SITE_FILE as SITE_FILE
from hubtools import Hub, user_jobs

pytestmark = [pytest.mark.slurm, pytest.mark.hub, pytest.mark.slow]


def test_job_dying_during_startup_is_reported(slurm_cluster, tmp_path):
    # a site whose single-user wrapper is broken: the job starts and exits at once
    hub = Hub(tmp_path, SITE_FILE, port=18500,
              extra_args=["--AIFactorySpawner.batchspawner_singleuser_cmd=/bin/false"])
    hub.start()
    try:
        start = time.monotonic()
        r = hub.spawn("t-researcher1", {"gpus": 0, "memory_gb": 1, "cpus": 1})
        if r.status_code == 500:  # failed within the hub's slow_spawn_timeout: the API says so
            message = r.json()["message"]
        else:
            assert r.status_code == 202, r.text
            final = list(hub.progress_events("t-researcher1"))[-1]
            assert final.get("failed"), final
            message = final["message"]
        took = time.monotonic() - start
        assert "ended before JupyterLab was ready" in message, message
        assert re.search(r"\(FAILED, exit code \d+:\d+\)", message), message  # sacct's verdict
        assert re.search(r"/home/t-researcher1/\.aifactory-session-\d+\.log", message)  # where to look
        assert took < 30, f"took {took:.0f} s: the hub waited instead of noticing"
        assert hub.server("t-researcher1") is None
        job_id = re.search(r"Slurm job (\d+) ended", message).group(1)
        assert job_id not in {j["job_id"] for j in user_jobs("t-researcher1")}
    finally:
        hub.stop_all_servers()
        hub.stop()
