"""The idle culler runs as a hub service, and culling a session cancels its Slurm job."""

from __future__ import annotations

import time

import pytest
import yaml
from conftest import HUB_SITE_FILE as SITE_FILE
from hubtools import Hub, user_jobs

pytestmark = [pytest.mark.slurm, pytest.mark.hub, pytest.mark.slow]


def test_idle_session_is_culled_and_its_gpu_freed(slurm_cluster, tmp_path):
    raw = yaml.safe_load(SITE_FILE.read_text())
    raw["culler"] = {"timeout_seconds": 10, "every_seconds": 5}
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(raw))
    hub = Hub(tmp_path, site_file, port=18400)
    hub.start()
    try:
        assert hub.spawn("t-partner1", {"gpus": 1, "memory_gb": 1, "cpus": 1}).status_code in (201, 202)
        hub.wait_ready("t-partner1")
        assert user_jobs("t-partner1")
        took = hub.wait_stopped("t-partner1", timeout=90)
        deadline = time.monotonic() + 20
        while user_jobs("t-partner1") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert user_jobs("t-partner1") == [], "culled, but the Slurm job (and its GPU) is still there"
        assert took > 5  # it was idle for the timeout first
        assert "idle-culler" in hub.log_tail(400)
    finally:
        hub.stop_all_servers()
        hub.stop()
