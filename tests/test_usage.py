"""Usage figures: the sacct parser and grouping (captured real output), then real jobs on the real
cluster read back through the dashboard (/services/usage/) and ``aifactory usage report``."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from conftest import HUB_SITE_FILE, SITE_FILE
from hubtools import Hub

from aifactory.services import usage_report
from aifactory.site import SiteError, load_site
from aifactory.slurm import usage

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path(os.environ.get("AIFACTORY_SCREENSHOTS", "/tmp/aifactory-screenshots"))
HUB_PORT = 22500

# sacct -a -X -P -n -o <usage.SACCT_FIELDS> on the local cluster (job 9001 shifted to cross a week)
CAPTURED = """\
393|researcher1|uni-research|cpu|billing=1,cpu=1,mem=1G,node=1|2026-11-28T00:51:39|2026-11-28T01:11:56|00:20:17|CANCELLED by 0||vm|jupyter
751|wk-storm0-07|uni-teaching|cpu|billing=1,cpu=1,mem=1G,node=1|2026-11-28T01:36:12|2026-11-28T01:48:17|00:12:05|FAILED||vm|spawner-jupyterhub
1090|wk-ws-e2e-01|uni-teaching|gpu|billing=1,cpu=1,gres/shard=1,mem=1G,node=1|2026-11-28T02:07:21|2026-11-28T02:07:35|00:00:14|CANCELLED by 1013|ws-ws-e2e|node2|jupyter-deep-learning-pytorch
1127|t-student1|uni-teaching|gpu||None|2026-11-28T02:29:44|00:00:00|CANCELLED by 1007||None assigned|jupyter-queued
1175|t-student1|uni-teaching|gpu|billing=1,cpu=1,gres/shard=1,mem=1G,node=1|2026-11-28T02:48:43|2026-11-28T02:49:07|00:00:24|CANCELLED||vm|jupyter
1185|t-researcher1|uni-research|gpu|billing=1,cpu=1,gres/gpu:h100=1,gres/gpu=1,mem=1G,node=1|2026-11-28T02:53:59|2026-11-28T02:54:08|00:00:09|CANCELLED||vm|jupyter
1186|t-partner1|regional-energy|gpu|billing=1,cpu=1,mem=1G,node=1|2026-11-28T02:54:11|2026-11-28T02:54:29|00:00:18|CANCELLED by 1010||vm|jupyter
1187|t-student2|uni-teaching|gpu|billing=1,cpu=1,gres/gpu:h100=2,gres/gpu=2,mem=256M,node=1|2026-11-28T02:54:31|2026-11-28T02:54:47|00:00:16|CANCELLED by 0||vm|aifactory-test-blocker
1194|t-student2|uni-teaching|cpu|billing=2,cpu=2,mem=256M,node=2|2026-11-28T02:55:14|2026-11-28T02:55:14|00:00:00|COMPLETED||node2,vm|wrap
1203|t-researcher1|uni-research|gpu|billing=1,cpu=1,gres/gpu:h100=1,gres/gpu=1,mem=256M,node=1|2026-11-28T02:58:18|Unknown|00:00:02|RUNNING||vm|aifactory-run-capture
9001|t-partner1|regional-energy|gpu|billing=4,cpu=4,gres/gpu:a100=1,gres/gpu=1,mem=4G,node=1|2026-11-29T23:00:00|2026-11-30T01:00:00|02:00:00|COMPLETED||node2|train|with|bars
"""


def jobs_by_id(site, start: str, end: str, now: str = "2026-11-28T02:58:30") -> dict[str, list[usage.UsageRow]]:
    rows = usage.usage_rows(site, usage.parse_sacct(CAPTURED), datetime.fromisoformat(start),
                            datetime.fromisoformat(end), now=datetime.fromisoformat(now))
    grouped: dict[str, list[usage.UsageRow]] = {}
    for row in rows:
        grouped.setdefault(row.job_id, []).append(row)
    return grouped


def test_parser_reads_allocations_and_skips_jobs_that_never_started():
    jobs = {j.job_id: j for j in usage.parse_sacct(CAPTURED)}
    assert "1127" not in jobs
    assert (jobs["1187"].gpus, jobs["1187"].cpus, jobs["1187"].gpu_slices) == (2, 1, 0)
    assert (jobs["1175"].gpus, jobs["1175"].gpu_slices) == (0, 1)
    assert jobs["1203"].end is None and jobs["1203"].state == "RUNNING"
    assert jobs["393"].elapsed_seconds == 20 * 60 + 17 and jobs["393"].state == "CANCELLED"
    assert jobs["9001"].name == "train|with|bars" and jobs["9001"].cpus == 4
    kinds = {job_id: job.kind for job_id, job in jobs.items()}
    assert kinds == {"393": "session", "751": "workshop", "1090": "workshop", "1175": "session", "1185": "session",
                     "1186": "session", "1187": "other", "1194": "other", "1203": "run", "9001": "other"}


def test_a_job_across_the_range_start_counts_only_its_part_inside(site):
    rows = jobs_by_id(site, "2026-11-28T01:00:00", "2026-11-28T02:50:00")
    # 00:51:39 -> 01:11:56 clipped to 01:00:00 -> 01:11:56
    assert [r.seconds for r in rows["393"]] == [11 * 60 + 56]
    assert rows["393"][0].cpu_hours == pytest.approx(716 / 3600) and rows["393"][0].gpu_hours == 0
    assert "1185" not in rows and "1203" not in rows  # after the range
    # a running job counts up to now
    assert [r.seconds for r in jobs_by_id(site, "2026-11-28T02:00:00", "2026-11-28T03:00:00")["1203"]] == [12]


def test_whole_gpus_and_slices_become_gpu_hours(site):
    rows = jobs_by_id(site, "2026-11-28T00:00:00", "2026-11-29T00:00:00")
    assert rows["1187"][0].gpu_hours == pytest.approx(16 * 2 / 3600)
    assert rows["1175"][0].gpus == pytest.approx(1 / 8)
    assert rows["1175"][0].gpu_hours == pytest.approx(24 / 8 / 3600)
    assert rows["1186"][0].gpu_hours == 0 and rows["1186"][0].cpu_hours == pytest.approx(18 / 3600)
    assert rows["1090"][0].parent == "university" and rows["1090"][0].kind == "workshop"


def test_a_slice_counts_by_the_slicing_of_its_node(tmp_path):
    raw = yaml.safe_load(SITE_FILE.read_text())
    raw["gpu_types"]["a100"]["shards"] = 4
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(raw))
    site = load_site(tmp_path / "site.yaml")
    rows = jobs_by_id(site, "2026-11-28T00:00:00", "2026-11-29T00:00:00")
    assert rows["1090"][0].gpus == pytest.approx(1 / 4)  # node2 holds the A100s, 4 slices each
    assert rows["1175"][0].gpus == pytest.approx(1 / 8)  # the H100 node (or the finest slicing)


def test_a_job_across_a_week_boundary_is_split(site):
    rows = jobs_by_id(site, "2026-11-29T00:00:00", "2026-12-01T00:00:00")["9001"]
    assert [(r.week, r.seconds) for r in rows] == [("2026-W48", 3600), ("2026-W49", 3600)]
    assert sum(r.gpu_hours for r in rows) == pytest.approx(2.0) and rows[0].cpu_hours == pytest.approx(4.0)


def test_totals_partner_share_and_csv(site):
    start, end = datetime(2026, 11, 28), datetime(2026, 12, 1)
    rows = usage.usage_rows(site, usage.parse_sacct(CAPTURED), start, end, now=datetime(2026, 11, 28, 2, 58, 30))
    by_parent = usage.totals(rows, "parent")
    gpu_total = sum(r.gpu_hours for r in rows)
    assert sum(g for g, _ in by_parent.values()) == pytest.approx(gpu_total)
    partner_w48 = sum(r.gpu_hours for r in rows if r.parent == "regional" and r.week == "2026-W48")
    w48 = sum(r.gpu_hours for r in rows if r.week == "2026-W48")
    share = usage.partner_share_by_week(site, rows)
    assert share["2026-W48"] == pytest.approx(partner_w48 / w48) and share["2026-W49"] == pytest.approx(1.0)
    assert usage.partner_target(site) == ("regional", 0.25)
    summary = list(csv.DictReader(io.StringIO(usage_report.summary_csv(rows))))
    assert sum(float(r["gpu_hours"]) for r in summary) == pytest.approx(gpu_total, abs=1e-5)
    jobs = list(csv.DictReader(io.StringIO(usage_report.jobs_csv(rows))))
    assert sorted({r["job_id"] for r in jobs}) == sorted({r.job_id for r in rows})


def test_who_sees_which_accounts(site, tmp_path):
    assert usage.visible_accounts(site, "admin1", is_admin=True) is None
    assert usage.visible_accounts(site, "partner1", is_admin=False) == {"regional-energy"}
    assert usage.visible_accounts(site, "student1", is_admin=False) == set()
    raw = yaml.safe_load(SITE_FILE.read_text())
    raw["usage"]["managers"] = {"boss": ["regional"]}
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(raw))
    assert usage.visible_accounts(load_site(tmp_path / "site.yaml"), "boss", False) == {
        "regional", "regional-health", "regional-energy", "regional-mobility"}


@pytest.mark.parametrize("usage_section, message", [
    ({"managers": {"partner1": ["nope"]}}, "usage.managers.partner1: unknown account 'nope'"),
    ({"managers": {"partner1": "regional"}}, "usage.managers.partner1: expected a list"),
    ({"partner_account": "regional-energy"}, "usage.partner_account: 'regional-energy' is not a top-level"),
    ({"colour": "red"}, "usage: unknown key(s) colour"),
])
def test_the_site_file_usage_section_is_validated(tmp_path, usage_section, message):
    raw = yaml.safe_load(SITE_FILE.read_text())
    raw["usage"] = usage_section
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SiteError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_site(tmp_path / "site.yaml")


def test_a_site_file_without_usage_loads_with_defaults(tmp_path):
    raw = yaml.safe_load(SITE_FILE.read_text())
    del raw["usage"]
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(raw))
    site = load_site(tmp_path / "site.yaml")
    assert site.usage.partner_account == "regional" and site.usage.managers == {}


@pytest.mark.parametrize("start, end, message", [
    ("2026-11-20", "2026-11-10", "reversed"),
    ("2026-11-01", "2026-12-01", "in the future"),
    ("2020-01-01", "2026-11-01", "at most 3 years"),
    ("2026-13-01", "2026-11-01", "not a valid date"),
    ("yesterday", "2026-11-01", "not a date of the form YYYY-MM-DD"),
    ("2026-11-01", "2026-11-1", "not a date of the form YYYY-MM-DD"),
])
def test_bad_date_ranges_are_refused(start, end, message):
    with pytest.raises(usage.UsageRangeError, match=message):
        usage.parse_range(start, end, today=date(2026, 11, 28))


def test_months():
    today = date(2026, 11, 28)
    assert usage.parse_month("2026-02", today) == (date(2026, 2, 1), date(2026, 2, 28))
    assert usage.parse_month("2025-12", today) == (date(2025, 12, 1), date(2025, 12, 31))
    for bad, message in (("2026-13", "not a month"), ("26-11", "not a month"), ("2026-12", "has not begun")):
        with pytest.raises(usage.UsageRangeError, match=message):
            usage.parse_month(bad, today)


def test_the_hub_registers_the_usage_service(site, monkeypatch):
    from traitlets.config import Config

    from aifactory.hub import hubconfig

    c = Config()
    hubconfig.apply_site(c, site)
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert services["usage"]["url"] == f"http://127.0.0.1:{hubconfig.USAGE_PORT}"
    assert services["usage"]["command"][-3:] == ["aifactory.services.usage", "--site", str(site.path)]
    user_role = next(r for r in c.JupyterHub.load_roles if r["name"] == "user")
    assert "access:services!service=usage" in user_role["scopes"]


# ---------------------------------------------------------------- real jobs, real hub

def on_cluster(test):
    """Marks of the tests that run real jobs and a real hub."""
    for mark in (pytest.mark.slurm, pytest.mark.hub, pytest.mark.slow):
        test = mark(test)
    return test


# (user, account, gres, cpus): a slice for the partner, a whole GPU for the researcher
TEST_JOBS = [("t-partner1", "regional-energy", "shard:1", 1), ("t-researcher1", "uni-research", "gpu:1", 2)]


def sacct_jobs(job_ids: list[str]) -> dict[str, dict]:
    out = subprocess.run(["sacct", "-X", "-P", "-n", "-j", ",".join(job_ids),
                          "-o", "JobID,State,Start,End,Elapsed,AllocTRES,Account,Partition"],
                         capture_output=True, text=True, check=True).stdout
    keys = ("job_id", "state", "start", "end", "elapsed", "tres", "account", "partition")
    return {line.split("|")[0]: dict(zip(keys, line.split("|"), strict=True)) for line in out.splitlines()}


@pytest.fixture(scope="module")
def ended_jobs(slurm_cluster):
    """Two short jobs that ran and ended, with sacct's record of them."""
    job_ids = []
    try:
        for user, account, gres, cpus in TEST_JOBS:
            job_ids.append(subprocess.run(
                ["sudo", "-u", user, "sbatch", "--parsable", "--job-name=aifactory-test-usage", f"--account={account}",
                 "--partition=gpu", "--qos=interactive", f"--gres={gres}", f"--cpus-per-task={cpus}", "--mem=256M",
                 "--time=00:02:00", "--chdir=/tmp", "--output=/dev/null", "--wrap", "sleep 3"],
                capture_output=True, text=True, check=True).stdout.strip().split(";")[0])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            records = sacct_jobs(job_ids)
            if all(records.get(j, {}).get("end", "Unknown") not in ("Unknown", "") for j in job_ids):
                break
            print(f"waiting for accounting to record the end of jobs {job_ids}", file=sys.stderr)
            time.sleep(2)
        else:
            raise AssertionError(f"jobs {job_ids} not recorded as ended: {sacct_jobs(job_ids)}")
        assert all(r["state"] == "COMPLETED" for r in records.values()), records
        yield records
    finally:
        subprocess.run(["scancel", *job_ids], check=False)


@pytest.fixture(scope="module")
def usage_hub(slurm_cluster, tmp_path_factory):
    hub = Hub(tmp_path_factory.mktemp("usage-hub"), HUB_SITE_FILE, port=HUB_PORT)
    hub.start()
    yield hub
    hub.stop()


def expected(record: dict) -> dict:
    """GPU-hours and CPU-hours from sacct's Elapsed x AllocTRES (a slice: 1/8 GPU in the test site)."""
    tres = dict(item.split("=", 1) for item in record["tres"].split(","))
    seconds = usage._elapsed_seconds(record["elapsed"])
    gpus = int(tres.get("gres/gpu", 0)) + int(tres.get("gres/shard", 0)) / 8
    return {"seconds": seconds, "cpus": int(tres["cpu"]), "gpus": gpus,
            "gpu_hours": seconds * gpus / 3600, "cpu_hours": seconds * int(tres["cpu"]) / 3600}


def check_job_rows(text: str, records: dict[str, dict]) -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(text)))
    for job_id, record in records.items():
        mine = [r for r in rows if r["job_id"] == job_id]
        assert len(mine) == 1, (job_id, mine)
        want = expected(record)
        assert want["seconds"] > 0 and want["gpus"] > 0
        assert int(mine[0]["seconds"]) == want["seconds"]
        assert (int(mine[0]["cpus"]), float(mine[0]["gpus"])) == (want["cpus"], want["gpus"])
        assert float(mine[0]["gpu_hours"]) == pytest.approx(want["gpu_hours"], abs=1e-6)
        assert float(mine[0]["cpu_hours"]) == pytest.approx(want["cpu_hours"], abs=1e-6)
        assert (mine[0]["account"], mine[0]["partition"]) == (record["account"], record["partition"])
    return rows


def job_range(records: dict) -> dict:
    first = min(datetime.fromisoformat(r["start"]).date() for r in records.values())
    return {"start": str(first), "end": str(date.today())}


def service(hub, user: str, **params):
    import requests

    return requests.get(f"{hub.url}/services/usage/", params=params, timeout=60,
                        headers={"Authorization": f"token {hub.token(user)}"})


@on_cluster
def test_dashboard_figures_equal_sacct(usage_hub, ended_jobs):
    rows = check_job_rows(service(usage_hub, "t-admin1", format="csv", rows="jobs", **job_range(ended_jobs)).text,
                          ended_jobs)
    summary = list(csv.DictReader(io.StringIO(
        service(usage_hub, "t-admin1", format="csv", **job_range(ended_jobs)).text)))
    # the summary is the sum of the jobs, group by group
    for group in summary:
        key = (group["account"], group["partition"], group["week"], group["kind"])
        members = [r for r in rows if (r["account"], r["partition"], r["week"], r["kind"]) == key]
        assert int(group["jobs"]) == len({r["job_id"] for r in members})
        assert float(group["gpu_hours"]) == pytest.approx(
            sum(float(r["gpu_hours"]) for r in members), abs=1e-6 * (len(members) + 1))  # rows rounded to 6 places
    page = service(usage_hub, "t-admin1", **job_range(ended_jobs))
    assert page.status_code == 200
    assert 'data-account="regional-energy"' in page.text and 'data-account="uni-research"' in page.text


@on_cluster
def test_the_monthly_report_figures_equal_sacct(slurm_cluster, ended_jobs, tmp_path):
    month = datetime.fromisoformat(next(iter(ended_jobs.values()))["start"]).strftime("%Y-%m")
    result = subprocess.run([sys.executable, "-m", "aifactory.cli", "--site", str(HUB_SITE_FILE), "usage", "report",
                             "--month", month, "--out", str(tmp_path / "report")], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert result.returncode == 0, result.stderr
    check_job_rows((tmp_path / "report" / f"usage-{month}-jobs.csv").read_text(), ended_jobs)
    chart = tmp_path / "report" / f"usage-{month}.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_mode & 0o077 == 0
    refused = subprocess.run([sys.executable, "-m", "aifactory.cli", "--site", str(HUB_SITE_FILE), "usage", "report",
                              "--month", "2026-13"], capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert refused.returncode != 0 and "not a month of the form YYYY-MM" in refused.stderr


@on_cluster
def test_who_may_see_what(usage_hub, ended_jobs):
    for params in ({}, {"format": "csv"}):
        refused = service(usage_hub, "t-student1", **params)
        assert refused.status_code == 403 and "admins and for the account managers" in refused.text
    partner = service(usage_hub, "t-partner1", format="csv", rows="jobs", **job_range(ended_jobs))
    assert partner.status_code == 200
    accounts = {r["account"] for r in csv.DictReader(io.StringIO(partner.text))}
    assert accounts == {"regional-energy"}
    page = service(usage_hub, "t-partner1", **job_range(ended_jobs))
    assert 'data-account="regional-energy"' in page.text and "uni-research" not in page.text


@on_cluster
def test_bad_ranges_get_400_with_a_message(usage_hub):
    today = date.today()
    cases = [({"start": str(today), "end": str(today - timedelta(days=3))}, "reversed"),
             ({"start": str(today), "end": str(today + timedelta(days=2))}, "in the future"),
             ({"start": "2019-01-01", "end": str(today)}, "at most 3 years"),
             ({"start": "2026-02-30", "end": str(today)}, "not a valid date"),
             ({"start": "<script>", "end": str(today)}, "not a date of the form YYYY-MM-DD")]
    for params, message in cases:
        for fmt in ({}, {"format": "csv"}):
            answer = service(usage_hub, "t-admin1", **params, **fmt)
            assert answer.status_code == 400 and message in answer.text, (params, answer.text[:300])
            if not fmt:  # the page escapes what it echoes (the CSV answer is plain text)
                assert "<script>" not in answer.text


@on_cluster
@pytest.mark.browser
def test_admin_sees_the_dashboard_in_a_browser(usage_hub, ended_jobs):
    from conftest import chromium_path
    from hubtools import PASSWORDS
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(),
                                    args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                                          "--disable-background-networking", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(f"{usage_hub.url}/hub/login")
            page.fill("#username_input", "t-admin1")
            page.fill("#password_input", PASSWORDS["t-admin1"])
            page.click("#login_submit")
            page.wait_for_url("**/hub/**")
            r = job_range(ended_jobs)
            page.goto(f"{usage_hub.url}/services/usage/?start={r['start']}&end={r['end']}")
            page.wait_for_selector("#usage-table")
            widths = page.eval_on_selector_all("img.chart", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
            assert len(widths) == 4 and all(w and w > 100 for w in widths), widths
            assert page.inner_text("tr[data-account=regional-energy]").startswith("regional-energy")
            page.screenshot(path=SCREENSHOTS / "usage-dashboard.png", full_page=True)
        finally:
            browser.close()
