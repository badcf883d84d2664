"""Course metadata checks, `aifactory courses check`, and distribution that never loses edits."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from aifactory.courses import (
    STATE_FILE,
    UPDATES_FILE,
    fetch_fresh,
    load_course,
    load_courses,
    publish,
    sync_course,
)

ROOT = Path(__file__).resolve().parents[1]
AIFACTORY = ["/opt/aifactory/venv/bin/aifactory", "--site", str(ROOT / "hub_config" / "site.yaml")]


def test_every_shipped_course_is_valid(site):
    courses, problems = load_courses(site)
    assert problems == []
    assert len(courses) >= 5
    for course in courses.values():
        assert len(course.notebooks) >= 3, course.slug
        assert course.objectives and course.summary


def copy_course(tmp_path, slug="ml-foundations") -> Path:
    target = tmp_path / "courses" / slug
    shutil.copytree(ROOT / "courses" / slug, target)
    return target


def edit_yaml(folder: Path, change):
    raw = yaml.safe_load((folder / "course.yaml").read_text())
    change(raw)
    (folder / "course.yaml").write_text(yaml.safe_dump(raw))


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda r: r.pop("title"), "missing field 'title'"),
        (lambda r: r.update(level="expert"), "level must be one of"),
        (lambda r: r["resources"].update(partition="bigmem"), "unknown partition 'bigmem'"),
        (lambda r: r["resources"].update(gpu_type="v100"), "unknown GPU type 'v100'"),
        (lambda r: r["resources"].update(partition="cpu", gpus=1), "partition 'cpu' has no GPUs"),
        (lambda r: r["resources"].update(hours=40), "outside the site limits"),
        (lambda r: r["notebooks"].append("09-missing.ipynb"), "'09-missing.ipynb' but"),
        (lambda r: r["notebooks"].append("Notes.ipynb"), "must look like 01-topic.ipynb"),
        (lambda r: r.update(objectives="learn"), "field 'objectives' must be list"),
        (lambda r: r.update(colour="red"), "unknown field 'colour'"),
    ],
)
def test_metadata_mistakes_are_named(site, tmp_path, change, message):
    folder = copy_course(tmp_path)
    edit_yaml(folder, change)
    courses, problems = load_courses(site, tmp_path / "courses")
    assert courses == {}
    assert any(message in p and "course.yaml" in p for p in problems), problems


def test_notebook_rules_are_checked(site, tmp_path):
    folder = copy_course(tmp_path)
    first = sorted(folder.glob("01-*.ipynb"))[0]
    notebook = json.loads(first.read_text())
    del notebook["metadata"]["aifactory"]
    for cell in notebook["cells"]:
        cell.get("metadata", {}).pop("tags", None)
    first.write_text(json.dumps(notebook))
    (folder / "04-unlisted.ipynb").write_text(first.read_text())
    _, problems = load_courses(site, tmp_path / "courses")
    text = "\n".join(problems)
    assert "missing notebook metadata 'aifactory'" in text
    assert "no cell tagged 'parameters'" in text
    assert "04-unlisted.ipynb: notebook is not listed" in text


def test_cli_check_exit_codes_and_messages(tmp_path):
    ok = subprocess.run([*AIFACTORY, "courses", "check"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "0 problem(s)" in ok.stdout
    folder = copy_course(tmp_path)
    edit_yaml(folder, lambda r: r["resources"].update(partition="bigmem"))
    bad = subprocess.run([*AIFACTORY, "courses", "check", "--dir", str(tmp_path / "courses")],
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert "error: " in bad.stderr and "unknown partition 'bigmem'" in bad.stderr


@pytest.fixture
def course(site, tmp_path):
    folder = copy_course(tmp_path)
    return load_course(folder, site)


def test_first_sync_copies_everything(course, tmp_path):
    home = tmp_path / "home"
    report = sync_course(course, home)
    assert sorted(report.copied) == sorted(course.notebooks)
    assert (home / course.first_notebook).read_bytes() == (course.path / course.first_notebook).read_bytes()
    assert json.loads((home / STATE_FILE).read_text()).keys() == set(course.notebooks)


def test_updates_reach_untouched_files_but_never_edited_ones(course, tmp_path):
    home = tmp_path / "home"
    sync_course(course, home)
    untouched, edited = course.notebooks[0], course.notebooks[1]
    (home / edited).write_text((home / edited).read_text().replace('"cells"', '"cells" ', 1))
    student_version = (home / edited).read_bytes()
    for name in (untouched, edited):  # the instructor updates both
        (course.path / name).write_text((course.path / name).read_text() + "\n")

    report = sync_course(course, home)
    assert report.updated == [untouched]
    assert report.kept_edits == [edited]
    assert (home / untouched).read_bytes() == (course.path / untouched).read_bytes()
    assert (home / edited).read_bytes() == student_version  # nothing lost
    assert edited in (home / UPDATES_FILE).read_text()

    fresh = fetch_fresh(course, edited, home)
    assert fresh.name == edited.replace(".ipynb", ".fresh.ipynb")
    assert fresh.read_bytes() == (course.path / edited).read_bytes()
    assert (home / edited).read_bytes() == student_version

    replaced = fetch_fresh(course, edited, home, replace=True)
    assert replaced.read_bytes() == (course.path / edited).read_bytes()
    backups = list(home.glob(edited.replace(".ipynb", ".backup-*.ipynb")))
    assert len(backups) == 1 and backups[0].read_bytes() == student_version
    assert sync_course(course, home).kept_edits == []
    assert not (home / UPDATES_FILE).exists()


def test_deleted_files_are_not_forced_back(course, tmp_path):
    home = tmp_path / "home"
    sync_course(course, home)
    (home / course.notebooks[2]).unlink()
    sync_course(course, home)
    assert not (home / course.notebooks[2]).exists()


def test_a_students_own_file_of_the_same_name_is_kept(course, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / course.first_notebook).write_text("mine")
    assert sync_course(course, home).kept_edits == [course.first_notebook]
    assert (home / course.first_notebook).read_text() == "mine"


def test_fetch_refuses_unknown_files(course, tmp_path):
    with pytest.raises(ValueError, match="has no file"):
        fetch_fresh(course, "../../etc/passwd", tmp_path)


def test_publish_is_world_readable_and_self_contained(site, tmp_path):
    target = tmp_path / "published"
    published, _ = publish(site, target)
    assert "ml-foundations" in published
    raw = yaml.safe_load((target / "site.yaml").read_text())
    assert raw["courses_dir"] == "courses" and "demo_users" not in raw
    for path in target.rglob("*"):
        assert path.stat().st_mode & 0o004, path
    from aifactory.site import load_site

    assert set(load_courses(load_site(target / "site.yaml"))[0]) == set(published)
