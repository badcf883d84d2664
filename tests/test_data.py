"""Trusted data: the registry, publishing with real unix permissions, jobs that may and may not read
a restricted dataset, the Python API in a kernel, courses' datasets and the hub's data page."""

from __future__ import annotations

import grp
import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import HUB_SITE_FILE, ROOT, chromium_path
from hubtools import PASSWORDS, Hub

from aifactory.data.registry import RegistryError, load_dataset, load_registry
from aifactory.site import SiteError, load_site

SRC = str(ROOT / "src")
PYTHON = sys.executable
WORK = HUB_SITE_FILE.parent / "data"  # traversable by the test users (jobs read the data root)
DATA_ROOT = WORK / "root"
GROUP_PREFIX = "aifdt-"  # not the production prefix: a demo's groups stay untouched
RESTRICTED = "health-admissions"
PORT = 23000


def data_site_file(registry: Path, root: Path = DATA_ROOT) -> Path:
    raw = yaml.safe_load(HUB_SITE_FILE.read_text())
    raw["data"] = {"registry": str(registry), "root": str(root), "group_prefix": GROUP_PREFIX}
    path = registry.with_name(registry.stem + "-site.yaml")
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def aifactory(site_file: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "aifactory.cli", "--site", str(site_file), "data", *args],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=SRC), timeout=300)


# ---------------------------------------------------------------- registry validation (no cluster)

def good_spec() -> dict:
    raw = yaml.safe_load((ROOT / "hub_config" / "datasets.yaml").read_text())
    return raw["datasets"][RESTRICTED]


@pytest.mark.parametrize(("change", "field"), [
    (lambda s: s["access"].update(accounts=["no-such-account"]), "datasets.x1.access.accounts"),
    (lambda s: s["access"].update(groups=["nobody"]), "datasets.x1.access.groups"),
    (lambda s: s.pop("licence"), "datasets.x1.licence: missing"),
    (lambda s: s.pop("provenance"), "datasets.x1.provenance: missing"),
    (lambda s: s["provenance"].pop("source"), "datasets.x1.provenance.source: missing"),
    (lambda s: s["provenance"].update(date="last week"), "datasets.x1.provenance.date"),
    (lambda s: s.update(sensitivity="secret"), "datasets.x1.sensitivity"),
    (lambda s: s.pop("access"), "datasets.x1.access"),
    (lambda s: s.update(sensitivity="open"), "datasets.x1.access"),
    (lambda s: s.update(hosting="Amsterdam"), "datasets.x1.hosting"),
    (lambda s: s.update(files={"../../etc/passwd.csv": {"generator": "sklearn_bundled"}}),
     "datasets.x1.files.../../etc/passwd.csv"),
    (lambda s: s.update(files={"a;rm -rf.csv": {"generator": "sklearn_bundled"}}), "datasets.x1.files.a;rm -rf.csv"),
    (lambda s: s.update(files={"x.csv": {"generator": "os.system"}}), "datasets.x1.files.x.csv.generator"),
    (lambda s: s.update(files={"x.csv": {"generator": "sklearn_bundled", "sha256": "abc"}}),
     "datasets.x1.files.x.csv.sha256"),
])
def test_registry_refuses_bad_fields_naming_them(site, change, field):
    spec = good_spec()
    change(spec)
    with pytest.raises(RegistryError) as error:
        load_dataset("x1", spec, site)
    assert field in str(error.value)


@pytest.mark.parametrize("name", ["../x", "a/b", "x;rm", "X", "a b", "$(id)", "a" * 21])
def test_registry_refuses_names_with_path_or_shell_characters(site, name):
    with pytest.raises(RegistryError, match=r"not a valid dataset name"):
        load_dataset(name, good_spec(), site)


def test_the_site_registry_is_valid_and_every_file_has_a_checksum(site):
    registry, errors = load_registry(site)
    assert errors == []
    assert {"ed-chest-pain", "regional-load", RESTRICTED, "iris"} <= set(registry.datasets)
    assert all(f.sha256 for d in registry.datasets.values() for f in d.files)
    health = registry.datasets[RESTRICTED]
    assert health.sensitivity == "pseudonymised-personal" and health.accounts == ("regional-health",)
    assert health.may_read(["regional-health"], []) and not health.may_read(["uni-teaching"], ["students"])


def test_site_data_section_is_validated_and_optional(tmp_path):
    raw = yaml.safe_load((ROOT / "hub_config" / "site.yaml").read_text())
    del raw["data"]
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(raw))
    old = load_site(tmp_path / "site.yaml")  # a site file from before the data section
    assert old.data.registry is None and str(old.data.root) == "/srv/aifactory-data"
    for bad, where in [({"root": "relative/data"}, "data.root"), ({"root": "/"}, "data.root"),
                       ({"group_prefix": "Bad Prefix"}, "data.group_prefix"), ({"rooot": "/x"}, "data")]:
        raw["data"] = bad
        (tmp_path / "site.yaml").write_text(yaml.safe_dump(raw))
        with pytest.raises(SiteError, match=where):
            load_site(tmp_path / "site.yaml")


def test_data_check_cli_names_the_field(tmp_path):
    raw = yaml.safe_load((ROOT / "hub_config" / "datasets.yaml").read_text())
    raw["datasets"]["iris"]["access"] = {"accounts": ["uni-teaching"]}
    raw["datasets"]["wine"].pop("licence")
    registry = tmp_path / "datasets.yaml"
    registry.write_text(yaml.safe_dump(raw))
    result = aifactory(data_site_file(registry, tmp_path / "root"), "check")
    assert result.returncode == 1
    assert "datasets.iris.access: an open dataset" in result.stderr
    assert "datasets.wine.licence: missing" in result.stderr


def test_courses_check_refuses_a_course_whose_audience_may_not_read_its_dataset(site, tmp_path):
    from aifactory.courses import load_courses

    course = tmp_path / "courses" / "health-data"
    shutil.copytree(ROOT / "courses" / "ai-healthcare", course)
    raw = yaml.safe_load((course / "course.yaml").read_text())
    raw["datasets"] = ["ed-chest-pain", RESTRICTED, "no-such-data"]
    (course / "course.yaml").write_text(yaml.safe_dump(raw))
    courses, errors = load_courses(site, tmp_path / "courses")
    assert courses == {}
    assert any(f"'{RESTRICTED}' is pseudonymised-personal" in e and "uni-teaching" in e for e in errors)
    assert any("'no-such-data' is not a valid registered dataset" in e for e in errors)
    assert not any("'ed-chest-pain'" in e for e in errors)
    converted = load_courses(site)[0]
    assert converted["ai-healthcare"].datasets == ("ed-chest-pain",)
    assert converted["energy-forecasting"].datasets == ("regional-load",)


# ---------------------------------------------------------------- published data root (root, real users)

@pytest.fixture(scope="module")
def published(slurm_cluster):
    """The site registry published into a test data root with the test users."""
    WORK.mkdir(parents=True, exist_ok=True)
    for folder in (HUB_SITE_FILE.parent, WORK):
        folder.chmod(0o755)
    registry = WORK / "datasets.yaml"
    shutil.copy(ROOT / "hub_config" / "datasets.yaml", registry)
    site_file = data_site_file(registry)
    result = aifactory(site_file, "publish")
    assert result.returncode == 0, result.stderr
    return site_file


@pytest.mark.slurm
def test_publish_sets_owner_modes_and_group_members(published):
    health = DATA_ROOT / RESTRICTED
    st = health.stat()
    group = grp.getgrnam(GROUP_PREFIX + RESTRICTED)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, group.gr_gid, 0o550)
    assert stat.S_IMODE((health / "admissions.csv").stat().st_mode) == 0o440
    assert stat.S_IMODE((DATA_ROOT / "iris" / "iris.csv").stat().st_mode) == 0o444
    assert "t-admin1" in group.gr_mem  # account regional-health
    assert not {"t-student1", "t-researcher1", "t-partner1"} & set(group.gr_mem)
    catalogue = json.loads((DATA_ROOT / "catalogue.json").read_text())["datasets"]
    assert catalogue[RESTRICTED]["unix_group"] == GROUP_PREFIX + RESTRICTED
    result = aifactory(published, "verify")
    assert result.returncode == 0, result.stdout


@pytest.mark.slurm
def test_publish_is_idempotent_and_reconciles_stale_members(published):
    group = GROUP_PREFIX + RESTRICTED
    subprocess.run(["gpasswd", "-a", "t-student1", group], check=True, capture_output=True)
    try:
        result = aifactory(published, "verify")
        assert result.returncode == 1
        assert f"group {group}: members differ from the registry; not allowed: t-student1" in result.stdout
        again = aifactory(published, "publish")
        assert again.returncode == 0, again.stderr
        assert f"removed t-student1 from {group}" in again.stdout
        assert "added" not in again.stdout  # nothing else changed
    finally:
        subprocess.run(["gpasswd", "-d", "t-student1", group], capture_output=True)
    assert aifactory(published, "verify").returncode == 0


@pytest.mark.slurm
def test_verify_names_a_changed_file_and_a_changed_mode(published):
    target = DATA_ROOT / "wine" / "wine.csv"
    original = target.read_bytes()
    try:
        target.chmod(0o644)
        target.write_bytes(original.replace(b"\n1", b"\n2", 1))
        (DATA_ROOT / "iris").chmod(0o777)
        result = aifactory(published, "verify")
        assert result.returncode == 1
        assert f"MISMATCH {target}: sha256 is" in result.stdout
        assert f"MISMATCH {target}: mode is 0644, expected 0444" in result.stdout
        assert f"MISMATCH {DATA_ROOT / 'iris'}: mode is 0777, expected 0555" in result.stdout
    finally:
        assert aifactory(published, "publish").returncode == 0
    assert target.read_bytes() == original
    assert aifactory(published, "verify").returncode == 0


@pytest.mark.slurm
def test_publish_refuses_a_checksum_that_differs_and_the_steward_updates_it(published, tmp_path):
    text = (ROOT / "hub_config" / "datasets.yaml").read_text()
    registry_sha = load_registry(load_site(published))[0].datasets["iris"].files[0].sha256
    registry = tmp_path / "datasets.yaml"
    registry.write_text(text.replace(registry_sha, "0" * 64))
    root = tmp_path / "root"
    site_file = data_site_file(registry, root)
    result = aifactory(site_file, "publish")
    assert result.returncode == 1
    assert f"datasets.iris.files.iris.csv.sha256: registry has {'0' * 64}, the generator gives {registry_sha}" \
        in result.stderr
    assert not root.exists()  # nothing was published
    result = aifactory(site_file, "publish", "--update-checksums")
    assert result.returncode == 0, result.stderr
    assert "recorded sha256 of iris/iris.csv" in result.stdout
    assert registry.read_text() == text  # the steward's comments and layout are kept
    assert aifactory(site_file, "verify").returncode == 0


@pytest.fixture
def job_dir():
    """A folder for the jobs' output, and the jobs cancelled at the end."""
    name = f"aifactory-test-data-{uuid.uuid4().hex[:8]}"
    folder = WORK / name
    folder.mkdir(mode=0o1777)
    folder.chmod(0o1777)
    yield folder, name
    subprocess.run(["scancel", f"--name={name}"], check=False)
    shutil.rmtree(folder, ignore_errors=True)


READ_SCRIPT = """
import aifactory.data as data
try:
    open({path!r}).close()
    print("OPEN: ok")
except PermissionError as e:
    print("OPEN: refused", e.errno)
try:
    frame = data.load({name!r})
    print("API: rows", len(frame), "used", data.used()[0]["sha256"])
except data.DatasetAccessError as e:
    print("API: refused:", e)
"""


def run_job(user: str, job_dir: tuple[Path, str]) -> str:
    """Submit a job as ``user`` after publishing: the group membership is looked up at job start."""
    folder, name = job_dir
    script = folder / f"{user}.py"
    script.write_text(READ_SCRIPT.format(path=str(DATA_ROOT / RESTRICTED / "admissions.csv"), name=RESTRICTED))
    script.chmod(0o644)
    output = folder / f"{user}.out"
    # sudo drops PYTHONPATH even with -E: env sets it for sbatch, which hands it to the job
    subprocess.run(
        ["sudo", "-E", "-u", user, "env", f"PYTHONPATH={SRC}", f"AIFACTORY_DATA_ROOT={DATA_ROOT}", "sbatch", "--wait", "--parsable", f"--job-name={name}", "--partition=cpu",
         "--mem=512M", "--time=00:05:00", f"--chdir={folder}", f"--output={output}",
         "--wrap", f"{PYTHON} {script}"],
        capture_output=True, text=True, check=False, timeout=240,
    )
    return output.read_text()


@pytest.mark.slurm
def test_a_member_reads_the_restricted_cohort_in_a_slurm_job(published, job_dir):
    # membership granted by this publish: the job, started after it, gets the group at job start
    group = GROUP_PREFIX + RESTRICTED
    subprocess.run(["gpasswd", "-d", "t-admin1", group], check=True, capture_output=True)
    result = aifactory(published, "publish")
    assert f"added t-admin1 to {group}" in result.stdout, result.stderr
    out = run_job("t-admin1", job_dir)
    sha256 = load_registry(load_site(published))[0].datasets[RESTRICTED].files[0].sha256
    assert "OPEN: ok" in out
    assert f"API: rows 5000 used {sha256}" in out, out


@pytest.mark.slurm
def test_a_student_job_is_refused_by_the_operating_system_with_an_explanation(published, job_dir):
    out = run_job("t-student1", job_dir)
    assert "OPEN: refused 13" in out, out  # EACCES from the kernel, not from our code
    assert f"API: refused: you may not read dataset '{RESTRICTED}'" in out
    assert f"unix group {GROUP_PREFIX}{RESTRICTED}" in out and "Slurm account regional-health" in out
    assert "Ask the owner, Regional health partners" in out
    assert "Traceback" not in out


@pytest.mark.slurm
def test_load_in_a_kernel_records_the_dataset_in_the_notebook(published, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('import aifactory.data\ndf = aifactory.data.load("iris")\nprint(df.shape)'),
        nbformat.v4.new_code_cell(f'aifactory.data.load("{RESTRICTED}")'),
    ])
    # the kernel runs as root here (it may read everything): the refusal is shown by a job above
    NotebookClient(nb, kernel_name="python3", timeout=120, allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute(
        env=dict(os.environ, PYTHONPATH=SRC, AIFACTORY_DATA_ROOT=str(DATA_ROOT)))
    recorded = [o["metadata"]["aifactory"] for cell in nb.cells for o in cell.outputs
                if o.get("metadata", {}).get("aifactory")]
    iris_sha = json.loads((DATA_ROOT / "catalogue.json").read_text())["datasets"]["iris"]["files"]["iris.csv"]
    assert recorded[0] == {"dataset": "iris", "version": "1.0", "file": "iris.csv", "sha256": iris_sha}
    assert recorded[1]["dataset"] == RESTRICTED
    assert "(150, 5)" in "".join(o.get("text", "") for o in nb.cells[0].outputs)


def test_the_refusal_renders_without_a_traceback_in_ipython():
    from aifactory.data import DatasetAccessError

    error = DatasetAccessError("you may not read dataset 'x'")
    assert isinstance(error, PermissionError)
    assert error._render_traceback_() == ["DatasetAccessError: you may not read dataset 'x'"]


# ---------------------------------------------------------------- the data page (hub + browser)

@pytest.fixture(scope="module")
def data_hub(published, tmp_path_factory):
    hub = Hub(tmp_path_factory.mktemp("data-hub"), published, port=PORT)
    hub.start()
    yield hub
    hub.stop()


@pytest.mark.hub
@pytest.mark.browser
@pytest.mark.slow
def test_data_page_shows_badges_and_who_may_use_what(data_hub):
    from playwright.sync_api import sync_playwright

    seen = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"])
        try:
            for user in ("t-admin1", "t-student1"):
                page = browser.new_context().new_page()
                page.set_default_timeout(30_000)
                page.goto(f"{data_hub.url}/hub/login")
                page.fill("#username_input", user)
                page.fill("#password_input", PASSWORDS[user])
                page.click("#login_submit")
                page.wait_for_url("**/hub/**")
                page.goto(f"{data_hub.url}/services/catalogue/")
                page.click("a.data-link")
                page.wait_for_selector(f'[data-dataset="{RESTRICTED}"]')
                assert page.url.endswith("/services/data/")
                card = page.locator(f'[data-dataset="{RESTRICTED}"]')
                assert card.locator(".badge.sensitivity").inner_text() == "pseudonymised-personal"
                assert "NL" in card.locator(".badge.hosting").inner_text()
                assert card.locator(".badge.synthetic").count() == 1
                iris = page.locator('[data-dataset="iris"]')
                assert "CC-BY-4.0" in iris.locator(".badge.licence").inner_text()
                assert iris.locator(".access").get_attribute("data-may-use") == "yes"
                assert 'aifactory.data.load("iris")' in iris.locator(".snippet").inner_text()
                seen[user] = (card.locator(".access").get_attribute("data-may-use"),
                              card.locator(".access").inner_text(), card.locator(".snippet").count())
                page.screenshot(path=str(WORK / f"data-page-{user}.png"), full_page=True)
        finally:
            browser.close()
    assert seen["t-admin1"][0] == "yes" and seen["t-admin1"][2] == 1
    assert seen["t-student1"][0] == "no" and seen["t-student1"][2] == 0
    assert "granted to Slurm account regional-health" in seen["t-student1"][1]


def test_account_users_parses_sacctmgr_output():
    from aifactory.slurm.queries import parse_account_users

    # `sacctmgr -n -P show assoc format=account,user` on the local cluster
    text = "root|\nroot|root\nregional|\nregional-health|\nregional-health|admin1\nregional-health|t-admin1\n" \
           "uni-teaching|t-student1\n"
    members = parse_account_users(text)
    assert members["regional-health"] == {"admin1", "t-admin1"}
    assert members["regional"] == set() and members["uni-teaching"] == {"t-student1"}


def test_hub_config_runs_the_data_page_for_every_user(site):
    from traitlets.config import Config

    from aifactory.hub.hubconfig import apply_site

    c = Config()
    apply_site(c, site)
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert services["data"]["command"][-3:] == ["aifactory.services.data", "--site", str(site.path)]
    assert services["data"]["oauth_client_allowed_scopes"] == ["read:users:groups!user"]
    user_role = next(r for r in c.JupyterHub.load_roles if r["name"] == "user")
    assert "access:services!service=data" in user_role["scopes"]


@pytest.mark.slurm
def test_only_root_publishes(published):
    result = subprocess.run(["sudo", "-u", "t-admin1", "env", f"PYTHONPATH={SRC}", PYTHON, "-m", "aifactory.cli",
                             "--site", str(published), "data", "publish"], capture_output=True, text=True,
                            cwd="/tmp", timeout=120)
    assert result.returncode == 1
    assert "publishing sets file owners and unix groups: run it as root" in result.stderr
