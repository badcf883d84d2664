"""Issue 8's findings that need no cluster: secrets, private files, limits, links, throttling."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pamela
import pytest
import yaml
from tornado import web

from aifactory import courses, security
from aifactory.hub import batchscript, hubconfig
from aifactory.hub.options import OptionsError, UserContext, normalise_form, validate
from aifactory.site import SiteError, load_site
from aifactory.slurm.queries import Association

ROOT = Path(__file__).resolve().parents[1]
SITE_FILE = ROOT / "hub_config" / "site.yaml"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# ---------------------------------------------------------------- 1: no secrets in the site file


def test_the_site_file_holds_no_passwords():
    raw = yaml.safe_load(SITE_FILE.read_text())
    assert all("password" not in spec for spec in raw["demo_users"].values())
    assert not hasattr(load_site(SITE_FILE).demo_users["admin1"], "password")


def test_a_password_in_the_site_file_is_refused(tmp_path):
    raw = yaml.safe_load(SITE_FILE.read_text())
    raw["demo_users"]["admin1"]["password"] = "admin1-demo"
    raw["courses_dir"] = str(ROOT / "courses")
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SiteError, match=r"demo_users\.admin1\.password: passwords do not belong"):
        load_site(tmp_path / "site.yaml")


def test_demo_passwords_are_random_private_and_kept(tmp_path):
    path = tmp_path / "etc" / "demo-passwords.yaml"
    first = security.ensure_demo_passwords(["a1", "b2"], path)
    assert mode(path.parent) == 0o700 and mode(path) == 0o600
    assert len(set(first.values())) == 2 and all(len(p) >= 16 for p in first.values())
    assert first["a1"] != "a1-demo"
    again = security.ensure_demo_passwords(["a1", "b2", "c3"], path)
    assert {k: again[k] for k in first} == first and "c3" in again
    assert security.read_demo_passwords(path) == again


def test_secret_files_must_be_private(tmp_path):
    secret = tmp_path / "oidc-secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    with pytest.raises(security.SecretFileError, match="readable by others"):
        security.read_secret_file(secret)
    secret.chmod(0o600)
    assert security.read_secret_file(secret) == "s3cret"


def test_oidc_client_secret_from_a_private_file(tmp_path):
    from traitlets.config import Config

    site = load_site(SITE_FILE)
    secret = tmp_path / "secret"
    secret.write_text("from-file")
    secret.chmod(0o600)
    auth = dict(site.authentication, method="oidc")
    auth["oidc"] = dict(auth["oidc"], client_secret_file=str(secret))
    c = Config()
    hubconfig.apply_authentication(c, SimpleNamespace(**{**site.__dict__, "authentication": auth}))
    assert c.GenericOAuthenticator.client_secret == "from-file"


# ---------------------------------------------------------------- 2 and 3: private by default


def test_make_private_closes_the_state_folder(tmp_path):
    (tmp_path / "jupyterhub.sqlite").write_text("")
    (tmp_path / "hub.log").write_text("")
    tmp_path.chmod(0o755)
    security.make_private(tmp_path)
    assert mode(tmp_path) == 0o700
    assert mode(tmp_path / "jupyterhub.sqlite") == 0o600 and mode(tmp_path / "hub.log") == 0o600


def test_the_batch_script_runs_with_umask_077_before_anything_writes():
    from test_batchscript import CTX, options

    script = batchscript.render(options(course="ml-foundations"), CTX)
    assert script.index("umask 077\n") < script.index("courses sync")
    umask = script.index("umask 077\n")
    assert umask < script.index(CTX.cmd)
    assert 'chmod 600 "/home/student1/.aifactory-session-$SLURM_JOB_ID.log"' in script


@pytest.fixture
def course(tmp_path):
    site = load_site(SITE_FILE)
    loaded, _ = courses.load_courses(site)
    return loaded["ml-foundations"]


def test_course_copies_are_private_whatever_the_umask(course, tmp_path):
    old = os.umask(0o022)
    try:
        courses.sync_course(course, tmp_path / "courses" / course.slug)
    finally:
        os.umask(old)
    dest = tmp_path / "courses" / course.slug
    assert mode(dest) == 0o700
    assert {mode(p) for p in dest.iterdir()} == {0o600}


# ---------------------------------------------------------------- 10: links and unreadable files


def test_sync_never_follows_links_and_skips_unreadable_files(course, tmp_path):
    dest = tmp_path / "copy"
    dest.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("not a notebook")
    first, second = course.notebooks[0], course.notebooks[1]
    (dest / first).symlink_to(victim)
    (dest / second).mkdir()  # reading it fails like an unreadable file does
    (dest / courses.STATE_FILE).symlink_to(victim)
    report = courses.sync_course(course, dest)
    assert victim.read_text() == "not a notebook"
    assert (dest / first).is_symlink()
    assert any(s.startswith(f"{first} (a link") for s in report.skipped), report
    assert any(s.startswith(f"{second} (") for s in report.skipped), report
    assert set(course.notebooks[2:]) <= set(report.copied)
    assert "skipped:" in report.summary()


def test_sync_command_reports_instead_of_a_traceback(course, tmp_path):
    dest = tmp_path / "copy"
    dest.mkdir()
    (dest / course.notebooks[0]).mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, "-m", "aifactory.cli", "--site", str(SITE_FILE), "courses", "sync",
                        course.slug, "--dest", str(dest)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "skipped" in r.stdout


# ---------------------------------------------------------------- 8: slugs are server names


@pytest.mark.parametrize("slug", ["9-lives", "double--dash", "trailing-", "a" * 31])
def test_courses_check_refuses_slugs_that_are_not_server_names(course, tmp_path, slug):
    import shutil

    shutil.copytree(course.path, tmp_path / slug)
    problems = courses.CourseProblems()
    assert courses.load_course(tmp_path / slug, load_site(SITE_FILE), problems) is None
    assert "not a valid course slug" in problems.errors[0]


# ---------------------------------------------------------------- 7: huge values


@pytest.fixture
def ctx():
    return UserContext("researcher1", [Association("uni-research", ("interactive",), "interactive", True)])


@pytest.mark.parametrize("options", [
    {"partition": "g" * 1_000_000},
    {"k" * 1_000_000: "1"},
])
def test_huge_values_are_refused_with_a_short_message(ctx, options):
    with pytest.raises(OptionsError) as refused:
        validate(options, load_site(SITE_FILE), ctx)
    assert len(str(refused.value)) < 200, str(refused.value)[:300]


def test_huge_form_values_are_refused_before_they_are_kept(ctx):
    with pytest.raises(OptionsError) as refused:
        normalise_form({"partition": ["x" * 100_000]})
    assert len(str(refused.value)) < 200
    assert "\n" not in str(OptionsError("a\nb", "bad"))


# ---------------------------------------------------------------- 12: the port callback, the form


def test_duplicate_json_keys_are_refused():
    with pytest.raises(web.HTTPError) as refused:
        security.parse_json_strict(b'{"port": 1, "port": 23456}')
    assert refused.value.status_code == 400
    assert security.parse_json_strict(b'{"port": 23456}') == {"port": 23456}


def test_cluster_errors_in_the_form_are_escaped():
    from aifactory.hub.spawner import AIFactorySpawner

    async def user_context():
        raise web.HTTPError(503, "The cluster did not answer (<script>alert(1)</script>)")

    fake = SimpleNamespace(user_context=user_context)
    page = asyncio.run(AIFactorySpawner._render_options_form(fake))
    assert "<script>" not in page and "&lt;script&gt;" in page


# ---------------------------------------------------------------- 6: throttling, without PAM


def test_wrong_passwords_are_throttled_per_user_and_address(monkeypatch):
    from aifactory.hub.auth import ThrottledPAMAuthenticator

    tried = []

    def wrong(username, password, **kwargs):
        tried.append(username)
        raise pamela.PAMError("Authentication failure")

    monkeypatch.setattr(pamela, "authenticate", wrong)
    auth = ThrottledPAMAuthenticator(failure_delay_seconds=0, max_failures_per_address=8)

    def attempt(user, address):
        handler = SimpleNamespace(request=SimpleNamespace(remote_ip=address))
        try:
            return asyncio.run(auth.authenticate(handler, {"username": user, "password": "wrong"}))
        except web.HTTPError as e:
            return e.status_code

    answers = [attempt("partner1", f"10.0.0.{i}") for i in range(30)]
    assert tried == ["partner1"] * 5 and answers[5:] == [429] * 25
    answers = [attempt(f"user{i}", "10.1.1.1") for i in range(12)]
    assert answers[8:] == [429] * 4 and len(tried) == 5 + 8


# ---------------------------------------------------------------- 11: stop during a controller outage


def test_stop_retries_scancel_until_slurm_confirms(monkeypatch):
    import logging

    from aifactory.hub.spawner import AIFactorySpawner
    from aifactory.slurm import queries as slurm
    from aifactory.slurm.poller import JobPoller

    answers = iter([
        slurm.SlurmUnavailable("slurm_load_jobs error: Unable to contact slurm controller"),  # scancel
        "", "57|RUNNING|None|2026-01-01T10:00:00|node1",  # scancel accepted, the job still runs
        "", "",  # scancel, and the hub's squeue no longer lists it
    ])
    commands = []

    async def run(argv, timeout=None, input=None):
        commands.append(argv[argv.index("-u") + 2] if "-u" in argv else argv[0])
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def no_wait(seconds):
        pass

    monkeypatch.setattr(slurm, "run", run)
    monkeypatch.setattr(asyncio, "sleep", no_wait)
    spawner = SimpleNamespace(job_id="57", stop_confirm_seconds=60.0, cancel_retry_seconds=30.0,
                              slurm_timeout=1.0, log=logging.getLogger("test"), _log_name="researcher1",
                              _exec_prefix=lambda: ["sudo", "-E", "-u", "researcher1"])
    spawner._cancel_confirmed = lambda job_id: AIFactorySpawner._cancel_confirmed(spawner, job_id)

    async def stop():
        spawner.poller = JobPoller(busy_interval=0.01)  # the hub's shared poller confirms
        await AIFactorySpawner.stop(spawner)

    asyncio.run(stop())
    assert commands == ["scancel", "scancel", "squeue", "scancel", "squeue"]
