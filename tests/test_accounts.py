"""Accounts from the site file (``aifactory accounts plan|apply``) and "where I stand".

Unit tests feed the parsers real output captured from the local cluster (sacctmgr, sshare,
sacct of Slurm 22.05); the ``slurm`` tests plan and apply against the real cluster and leave it
as they found it; the browser test opens the spawn form as a partner.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from conftest import HUB_SITE_FILE, ROOT

from aifactory.hub.options import OptionsError, UserContext, render_form, validate
from aifactory.site import SiteError, load_site
from aifactory.slurm import accounts
from aifactory.slurm.queries import Association
from aifactory.slurm.standing import AccountStanding, parse_gpu_hours, parse_sshare, roll_up, user_standing

THROWAWAY = "t-tmp-acct"

# ---------------------------------------------------------------- captured from the local cluster

SHOW_ACCOUNT = """\
regional|compute reserved for regional partners
regional-energy|energy companies
regional-health|hospitals and health partners
regional-mobility|mobility companies
root|default root account
t-tmp-acct|throw-away test account
uni-research|university research groups
uni-teaching|workshops and courses of the knowledge centre
university|university research and teaching
"""
# format=account,user,parentname,fairshare,qos,defaultqos,grptresmins (partner1: a demo user)
SHOW_ASSOC = """\
root|||1|normal||
root|root||1|normal||
regional||root|25|normal||
regional-energy||regional|30|normal||
regional-energy|partner1||1|interactive|interactive|
regional-energy|t-partner1||1|interactive|interactive|
regional-health||regional|40|normal||
regional-health|t-admin1||1|interactive,workshop|interactive|
regional-mobility||regional|30|normal||
university||root|75|normal||
uni-research||university|60|normal||
uni-research|t-admin1||1|interactive,workshop|interactive|
uni-research|t-instructor1||1|interactive,workshop|workshop|
uni-research|t-researcher1||1|interactive|interactive|
uni-teaching||university|40|normal||
uni-teaching|t-instructor1||1|interactive,workshop|workshop|
uni-teaching|t-student1||1|interactive,workshop|workshop|
uni-teaching|t-student2||1|interactive,workshop|workshop|
"""
SHOW_USER = """\
partner1|regional-energy
root|root
t-admin1|uni-research
t-instructor1|uni-teaching
t-partner1|regional-energy
t-researcher1|uni-research
t-student1|uni-teaching
t-student2|uni-teaching
"""
SHOW_QOS = """\
normal|Normal QOS default|0||
interactive|interactive notebook sessions|10|08:00:00|gres/gpu=2,gres/shard=4
workshop|courses and workshops (small, short)|20|04:00:00|gres/gpu=1,gres/shard=2
"""
SSHARE = """\
regional-energy||30|0.300000|195|1.000000|
 regional-energy|t-partner1|1|0.500000|130|0.666478|0.764706
uni-research||60|0.600000|2750|0.033542|
"""
# sacct -a -X -n -P -o JobID,Account,AllocTRES,Start,End (the last two: still running, never started)
SACCT = """\
11|uni-research|billing=2,cpu=2,gres/gpu:h100=2,gres/gpu=2,mem=2G,node=1|2026-11-27T23:46:53|2026-11-27T23:49:15
1105|regional-energy|billing=1,cpu=1,gres/gpu:h100=1,gres/gpu=1,mem=1G,node=1|2026-11-28T02:18:23|2026-11-28T02:18:39
1125|regional-energy|billing=1,cpu=1,mem=1G,node=1|2026-11-28T02:29:07|2026-11-28T02:29:25
900|regional-energy|billing=1,cpu=1,gres/gpu:a100=2,gres/gpu=2,mem=1G,node=1|2026-10-31T23:00:00|2026-11-01T01:00:00
1200|regional-health|billing=1,cpu=1,gres/gpu:a100=1,gres/gpu=1,mem=1G,node=1|2026-11-28T02:00:00|Unknown
1201|regional-health||Unknown|Unknown
"""


@pytest.fixture(scope="module")
def test_site():
    return load_site(HUB_SITE_FILE)


def captured_state() -> accounts.AccountingState:
    return accounts.parse_state(SHOW_ACCOUNT, SHOW_ASSOC, SHOW_USER, SHOW_QOS)


def test_parse_state_reads_accounts_associations_and_qos():
    state = captured_state()
    assert set(state.accounts) == {"root", "regional", "regional-energy", "regional-health", "regional-mobility",
                                   "university", "uni-research", "uni-teaching"}  # t-tmp-acct: no association
    assert state.accounts["uni-teaching"] == accounts.SlurmAccount(
        "uni-teaching", "university", "40", "workshops and courses of the knowledge centre", None)
    assert state.associations[("t-instructor1", "uni-research")].qos == ("interactive", "workshop")
    assert state.associations[("t-instructor1", "uni-research")].default_qos == "workshop"
    assert state.default_accounts["t-admin1"] == "uni-research"
    assert state.qos["interactive"] == accounts.SlurmQos("interactive", "interactive notebook sessions", 10, 480, 2, 4)
    assert state.qos["normal"].max_wall_minutes is None
    assert state.below({"regional"}) == {"regional", "regional-energy", "regional-health", "regional-mobility"}


def test_limit_parsing_from_grptresmins():
    state = accounts.parse_state("", "t-x||regional|5|normal||cpu=10,gres/gpu=120\n", "", "")
    assert state.accounts["t-x"].gpu_minutes == 120


@pytest.mark.parametrize("text, minutes", [("08:00:00", 480), ("1-00:00:00", 1440), ("2-12:30", 3630),
                                           ("30:00", 30), ("", None), ("UNLIMITED", None)])
def test_wall_minutes(text, minutes):
    assert accounts.wall_minutes(text) == minutes


def test_plan_against_the_captured_cluster_is_only_the_new_limit(test_site):
    """The captured cluster predates gpu_hours_per_month: that limit is the one difference."""
    todo = accounts.plan(test_site, captured_state())
    assert [str(c) for c in todo.changes] == [
        "~ account regional-energy: GPU-minutes per month (GrpTRESMins) none -> 30000"]
    assert todo.changes[0].argv == ("modify", "account", "where", "name=regional-energy",
                                    "cluster=aifactory-demo", "set", "GrpTRESMins=gres/gpu=30000")
    assert todo.notes == []


def test_plan_prunes_only_what_the_site_file_manages(test_site):
    state = captured_state()
    extra = {
        # an account the file dropped, now empty; and one a walk-in (not named by the file) still uses
        "t-gone": accounts.SlurmAccount("t-gone", "regional", "5", "gone"),
        "t-used": accounts.SlurmAccount("t-used", "uni-teaching", "5", "used"),
        # another tenant's top-level account: not under the site's tree
        "other-tenant": accounts.SlurmAccount("other-tenant", "root", "10", "theirs"),
    }
    state.accounts.update(extra)
    for user, account in (("t-partner1", "t-gone"), ("walkin7", "t-used"), ("t-partner1", "other-tenant"),
                          ("partner1", "uni-research")):
        state.associations[(user, account)] = accounts.SlurmAssociation(user, account, ("interactive",), "interactive")
    state.accounts["regional-energy"] = accounts.SlurmAccount("regional-energy", "regional", "30", "energy companies",
                                                              30000)
    todo = accounts.plan(test_site, state)
    assert [str(c) for c in todo.changes] == [
        "- user t-partner1 in t-gone: not in the site file (only with --prune)",
        "- account t-gone: not in the site file (only with --prune)",
    ]
    assert all(c.prune for c in todo.changes)
    assert todo.notes == ["account t-used is not in the site file but stays: it holds users the site file does "
                          "not name (walkin7)"]


def test_plan_adds_and_modifies(test_site, tmp_path):
    raw = yaml.safe_load(HUB_SITE_FILE.read_text())
    raw["accounts"]["regional"]["subaccounts"]["regional-health"]["shares"] = 45
    raw["accounts"]["regional"]["subaccounts"][THROWAWAY] = {"shares": 5, "description": "Throw-away"}
    raw["demo_users"]["t-partner1"]["extra_accounts"] = [THROWAWAY]
    raw["demo_users"]["t-partner1"]["qos"] = ["workshop", "interactive"]
    raw["qos"]["workshop"]["priority"] = 25
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    lines = [str(c) for c in accounts.plan(load_site(tmp_path / "site.yaml"), captured_state()).changes]
    assert lines == [
        "~ qos workshop: priority 20 -> 25",
        "~ account regional-health: shares 40 -> 45",
        "~ account regional-energy: GPU-minutes per month (GrpTRESMins) none -> 30000",
        f"+ account {THROWAWAY}: parent regional, shares 5, 'Throw-away'",
        "~ user t-partner1 in regional-energy: qos interactive (default interactive) -> interactive,workshop "
        "(default workshop)",
        f"+ user t-partner1 in {THROWAWAY}: qos interactive,workshop (default workshop)",
    ]


def test_site_file_gpu_hours_per_month_is_validated(tmp_path):
    raw = yaml.safe_load(HUB_SITE_FILE.read_text())
    assert load_site(HUB_SITE_FILE).accounts["regional-health"].gpu_hours_per_month is None
    for bad, message in ((-5, "must not be negative"), ("lots", "expected int"), (True, "expected int")):
        raw["accounts"]["regional"]["subaccounts"]["regional-health"]["gpu_hours_per_month"] = bad
        (tmp_path / "site.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        with pytest.raises(SiteError, match=f"accounts.regional.subaccounts.regional-health.gpu_hours_per_month: "
                                            f".*{message}"):
            load_site(tmp_path / "site.yaml")
    raw["accounts"]["regional"]["subaccounts"]["regional-health"]["gpu_hours_per_month"] = 40
    raw["accounts"]["root"] = {"shares": 1}
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(SiteError, match="accounts.root: 'root' is Slurm's own"):
        load_site(tmp_path / "site.yaml")


# ---------------------------------------------------------------- standing: parsers and the validator


def test_parse_sshare():
    rows = parse_sshare(SSHARE)
    assert rows[0].account == "regional-energy" and rows[0].user == "" and rows[0].raw_shares == "30"
    assert rows[0].fair_share is None and rows[0].norm_shares == 0.3
    assert rows[1].user == "t-partner1" and rows[1].fair_share == 0.764706 and rows[1].raw_usage == 130


def test_parse_gpu_hours_counts_whole_gpus_inside_the_month():
    since, until = datetime(2026, 11, 1), datetime(2026, 11, 28, 3, 0, 0)
    hours = parse_gpu_hours(SACCT, since, until)
    # 16 s on 1 GPU, plus 2 GPUs for the hour of job 900 that falls into November
    assert hours["regional-energy"] == pytest.approx(16 / 3600 + 2.0)
    assert hours["uni-research"] == pytest.approx(2 * 142 / 3600)
    assert hours["regional-health"] == pytest.approx(1.0)  # running since 02:00, counted up to now


def test_roll_up_counts_sub_accounts(test_site):
    used = roll_up(test_site, {"regional-energy": 2.0, "regional-health": 1.5, "uni-teaching": 9.0},
                   ["regional", "regional-energy"])
    assert used == {"regional": 3.5, "regional-energy": 2.0}


def partner_context(used: float, limit: int | None = 500, known: bool = True) -> UserContext:
    standing = {"regional-energy": AccountStanding("regional-energy", "30", 0.3, 0.76, used, limit)} if known else {}
    return UserContext("t-partner1", [Association("regional-energy", ("interactive",), "interactive", True)],
                       standing=standing)


def test_validator_refuses_a_start_over_the_gpu_hours_with_the_figures(test_site):
    ok = validate({"gpus": 2, "hours": 4}, test_site, partner_context(used=492.0))
    assert ok.gpus == 2
    with pytest.raises(OptionsError) as refused:
        validate({"gpus": 2, "hours": 5}, test_site, partner_context(used=492.0))
    assert str(refused.value) == ("gpus: account 'regional-energy' has used 492.0 of its 500 GPU-hours this month "
                                  "(8.0 left); 2 GPU(s) for 5 h need 10.0. Ask for fewer GPUs or hours, or use "
                                  "another account")
    assert validate({"gpus": 0, "partition": "cpu"}, test_site, partner_context(used=600.0)).gpus == 0
    with pytest.raises(OptionsError, match="not known right now"):
        validate({"gpus": 1}, test_site, partner_context(0.0, known=False))


def test_form_shows_where_the_user_stands(test_site):
    page = render_form(test_site, partner_context(used=12.25))
    row = page[page.index('<tr data-account="regional-energy">'):]
    row = row[:row.index("</tr>")]
    assert "30 (30% of regional)" in row and "0.76" in row and "12.2 of 500 (487.8 left)" in row


# ---------------------------------------------------------------- the real cluster


def aifactory(*args: str, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aifactory.cli", "--site", str(site), *args], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), timeout=180)


def throwaway_present(cluster: str) -> bool:
    out = subprocess.run(["sacctmgr", "-n", "-P", "show", "assoc", f"cluster={cluster}", f"account={THROWAWAY}",
                          "format=account"], capture_output=True, text=True, check=True).stdout
    return THROWAWAY in out.split()


@pytest.fixture
def restore(slurm_cluster):
    """Apply the test site file after the test, and drop the throw-away account: the cluster as found."""
    yield
    aifactory("accounts", "apply", site=HUB_SITE_FILE)
    if throwaway_present(slurm_cluster.cluster_name):
        subprocess.run(["sacctmgr", "-i", "remove", "account", "where", f"name={THROWAWAY}",
                        f"cluster={slurm_cluster.cluster_name}"], capture_output=True, check=False)


@pytest.mark.slurm
def test_plan_on_the_cluster_as_set_up_is_nothing_to_do(slurm_cluster):
    result = aifactory("accounts", "plan", site=HUB_SITE_FILE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "nothing to do: Slurm matches the site file", result.stdout


@pytest.mark.slurm
@pytest.mark.slow
def test_changed_share_is_planned_applied_and_pruned_only_with_prune(slurm_cluster, restore, tmp_path):
    cluster = slurm_cluster.cluster_name
    raw = yaml.safe_load(HUB_SITE_FILE.read_text())
    raw["accounts"]["regional"]["subaccounts"]["regional-mobility"]["shares"] = 35
    raw["accounts"]["regional"]["subaccounts"][THROWAWAY] = {"shares": 3, "description": "Throw-away test account",
                                                             "gpu_hours_per_month": 2}
    changed = tmp_path / "site.yaml"
    changed.write_text(yaml.safe_dump(raw, sort_keys=False))

    plan = aifactory("accounts", "plan", site=changed)
    assert plan.returncode == 0, plan.stderr
    assert "~ account regional-mobility: shares 30 -> 35" in plan.stdout
    assert f"+ account {THROWAWAY}: parent regional, shares 3" in plan.stdout
    applied = aifactory("accounts", "apply", site=changed)
    assert applied.returncode == 0, applied.stderr
    sshare = subprocess.run(["sshare", "-P", "-n", "-A", f"regional-mobility,{THROWAWAY}", "-o",
                             "Account,User,RawShares"], capture_output=True, text=True, check=True).stdout
    assert "regional-mobility||35" in sshare.split() and f"{THROWAWAY}||3" in sshare.split()
    limit = subprocess.run(["sacctmgr", "-n", "-P", "show", "assoc", f"cluster={cluster}", f"account={THROWAWAY}",
                            "format=account,user,grptresmins"], capture_output=True, text=True, check=True).stdout
    assert f"{THROWAWAY}||gres/gpu=120" in limit.split()
    assert "nothing to do" in aifactory("accounts", "plan", site=changed).stdout

    # back to the test site file: the share returns, the throw-away account stays without --prune
    back = aifactory("accounts", "apply", site=HUB_SITE_FILE)
    assert back.returncode == 0, back.stderr
    assert "~ account regional-mobility: shares 35 -> 30" in back.stdout
    assert throwaway_present(cluster)
    removals = [line for line in aifactory("accounts", "plan", site=HUB_SITE_FILE).stdout.splitlines()
                if line.startswith("- ")]
    # the shared cluster: prune only when the throw-away account is all it would remove
    assert removals == [f"- account {THROWAWAY}: not in the site file (only with --prune)"]
    pruned = aifactory("accounts", "apply", "--prune", site=HUB_SITE_FILE)
    assert pruned.returncode == 0, pruned.stderr
    assert not throwaway_present(cluster)
    assert "nothing to do" in aifactory("accounts", "plan", site=HUB_SITE_FILE).stdout


@pytest.mark.slurm
def test_an_invalid_site_file_changes_nothing(slurm_cluster, restore, tmp_path):
    raw = yaml.safe_load(HUB_SITE_FILE.read_text())
    raw["accounts"]["regional"]["subaccounts"]["regional-mobility"]["shares"] = 35  # valid, but must not land
    raw["accounts"]["regional"]["subaccounts"]["regional-health"]["gpu_hours_per_month"] = "lots"
    bad = tmp_path / "site.yaml"
    bad.write_text(yaml.safe_dump(raw, sort_keys=False))
    before = accounts.read_state(slurm_cluster.cluster_name)
    result = aifactory("accounts", "apply", site=bad)
    assert result.returncode != 0
    assert "accounts.regional.subaccounts.regional-health.gpu_hours_per_month: expected int" in result.stderr
    assert accounts.read_state(slurm_cluster.cluster_name) == before


def wait_for_accounting(job_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State,End"], capture_output=True,
                             text=True).stdout.strip()
        if out.startswith("COMPLETED") and "Unknown" not in out:
            return
        time.sleep(1)
    raise AssertionError(f"job {job_id} not recorded as completed: {out!r}")


@pytest.mark.slurm
@pytest.mark.slow
def test_gpu_hour_refusal_with_real_figures(slurm_cluster, tmp_path):
    """A real GPU job of t-partner1, then sshare/sacct figures decide the validator's answer."""
    job = subprocess.run(["sudo", "-u", "t-partner1", "sbatch", "--parsable", "--job-name=aifactory-test-accounts",
                          "--account=regional-energy", "--qos=interactive", "--gres=gpu:1", "--mem=256M",
                          "--time=00:05:00", "--chdir=/tmp", "--output=/dev/null", "--wrap", "sleep 3"],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        wait_for_accounting(job)
    finally:
        subprocess.run(["scancel", job], check=False)
    raw = yaml.safe_load(HUB_SITE_FILE.read_text())
    raw["accounts"]["regional"]["subaccounts"]["regional-energy"]["gpu_hours_per_month"] = 1
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    tiny = load_site(tmp_path / "site.yaml")
    standing = asyncio.run(user_standing("t-partner1", ["regional-energy"], tiny, max_age=0))
    energy = standing["regional-energy"]
    assert energy.shares == "30" and energy.gpu_hours_limit == 1 and 0 <= energy.fair_share <= 1
    assert energy.gpu_hours_used >= 3 / 3600
    ctx = UserContext("t-partner1", [Association("regional-energy", ("interactive",), "interactive", True)],
                      standing=standing)
    with pytest.raises(OptionsError) as refused:
        validate({"gpus": 1, "hours": 1}, tiny, ctx)
    assert f"has used {energy.gpu_hours_used:.1f} of its 1 GPU-hours this month" in str(refused.value)
    assert validate({"gpus": 0, "partition": "cpu", "hours": 1}, tiny, ctx).gpus == 0


# ---------------------------------------------------------------- the hub: form and REST API

HUB_PORT = 22000  # this feature's port block: 22000-22499
HUB_GPU_HOURS = 10  # regional-energy's monthly GPU-hours on the test hub


@pytest.fixture(scope="module")
def standing_hub(slurm_cluster, tmp_path_factory):
    """A hub on this feature's ports whose site file gives regional-energy a small GPU-hour limit."""
    from hubtools import Hub

    state = tmp_path_factory.mktemp("accounts-hub")
    raw = yaml.safe_load(HUB_SITE_FILE.read_text())
    raw["accounts"]["regional"]["subaccounts"]["regional-energy"]["gpu_hours_per_month"] = HUB_GPU_HOURS
    site_file = state / "site.yaml"
    site_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    site_file.chmod(0o644)
    hub = Hub(state, site_file, port=HUB_PORT, extra_args=["--AIFactorySpawner.standing_cache_seconds=0"])
    hub.start()
    yield hub
    hub.stop_all_servers()
    hub.stop()


@pytest.mark.slurm
@pytest.mark.hub
@pytest.mark.browser
@pytest.mark.slow
def test_partner_sees_where_they_stand_in_the_spawn_form(standing_hub):
    from conftest import chromium_path
    from hubtools import PASSWORDS
    from playwright.sync_api import sync_playwright

    screenshot = ROOT / "docs" / "screenshots" / "form-standing.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(),
                                    args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                                          "--disable-background-networking", "--disable-component-update"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(f"{standing_hub.url}/hub/login")
            page.fill("#username_input", "t-partner1")
            page.fill("#password_input", PASSWORDS["t-partner1"])
            page.click("#login_submit")
            page.wait_for_url("**/hub/**")
            page.goto(f"{standing_hub.url}/hub/spawn")
            row = page.wait_for_selector('#aif-standing tr[data-account="regional-energy"]')
            assert row.query_selector(".aif-shares").inner_text() == "30 (30% of regional)"
            factor = float(row.query_selector(".aif-fair-share").inner_text())
            assert 0 <= factor <= 1
            used = row.query_selector(".aif-gpu-hours").inner_text()
            assert f" of {HUB_GPU_HOURS} (" in used and float(used.split()[0]) >= 0
            rows = page.query_selector_all("#aif-standing tbody tr")
            assert [r.get_attribute("data-account") for r in rows] == ["regional-energy"]
            form = page.inner_text("#spawn_form")
            assert "uni-" not in form and "university" not in form.lower()
            page.locator(".aifactory-options").screenshot(path=screenshot)
        finally:
            browser.close()


def hub_log(hub) -> str:
    return (hub.state / "hub.log").read_text(errors="replace")


@pytest.mark.slurm
@pytest.mark.hub
def test_rest_api_start_over_the_gpu_hours_is_refused_with_the_figures(standing_hub):
    submitted = hub_log(standing_hub).count("Job submitted")
    r = standing_hub.spawn("t-partner1", {"gpus": 2, "hours": 8})
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    assert "account 'regional-energy' has used" in message and f"of its {HUB_GPU_HOURS} GPU-hours" in message
    assert "2 GPU(s) for 8 h need 16.0" in message
    # refused before sbatch (the test users are shared: another checkout's hub may run their jobs)
    assert "Refused options for t-partner1" in hub_log(standing_hub)
    assert hub_log(standing_hub).count("Job submitted") == submitted
    standing_hub.stop_all_servers()


@pytest.mark.slurm
@pytest.mark.hub
@pytest.mark.slow
def test_a_start_within_the_limits_runs(standing_hub):
    """The standing queries ride along a real start (CPU partition: the shared cluster's GPUs may be busy)."""
    from hubtools import user_jobs

    before = {j["job_id"] for j in user_jobs("t-partner1")}
    try:
        r = standing_hub.spawn("t-partner1", {"partition": "cpu", "gpus": 0, "cpus": 1, "memory_gb": 1, "hours": 1})
        assert r.status_code in (201, 202), r.text
        standing_hub.wait_ready("t-partner1")
        new = [j for j in user_jobs("t-partner1") if j["job_id"] not in before]
        assert [(j["account"], j["partition"], j["state"]) for j in new] == [("regional-energy", "cpu", "RUNNING")]
    finally:
        standing_hub.stop_all_servers()
