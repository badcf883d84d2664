"""Distribution of courses into a student's home, and publishing them for jobs.

Distribution copies a course into the student's ``~/courses/<slug>/`` and never overwrites
a file the student has changed: it remembers the hash of what it delivered, updates only
untouched files, and reports instructor updates that were held back so the student can
fetch a fresh copy. ``publish`` copies the site file and the valid courses to a
world-readable folder, because jobs run as the user and read courses from there.

Why not nbgitpuller: it needs the course as a git remote and resolves conflicts silently
(local changes win) without telling the student which updates were not applied.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from aifactory.courses.check import load_courses
from aifactory.courses.model import Course
from aifactory.site import Site

STATE_FILE = ".aifactory-sync.json"
# Jobs run as the user: they read courses from here, not from the (possibly private) source tree
PUBLISHED_DIR = "/opt/aifactory/published"
UPDATES_FILE = "UPDATES.md"


def _read_nofollow(path: Path) -> bytes:
    """The content of ``path``; a symbolic link is refused (OSError), never followed."""
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
        return f.read()


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` as a 0600 file: never through a link, never readable by others."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o600)
        f.write(data)


def _sha256(path: Path) -> str:
    return hashlib.sha256(_read_nofollow(path)).hexdigest()


def _read_delivered(dest: Path) -> dict[str, str]:
    """What was delivered into ``dest``: file name -> hash of the delivered version."""
    try:
        return json.loads(_read_nofollow(dest / STATE_FILE))
    except (OSError, ValueError):
        return {}


def _write_delivered(dest: Path, delivered: dict[str, str]) -> None:
    tmp = dest / (STATE_FILE + ".tmp")
    tmp.unlink(missing_ok=True)
    _write_private(tmp, json.dumps(delivered, indent=1, sort_keys=True).encode())
    tmp.replace(dest / STATE_FILE)


@dataclass
class SyncReport:
    copied: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    kept_edits: list[str] = field(default_factory=list)  # instructor update held back
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "name (why)": links, unreadable files

    def summary(self) -> str:
        lines = []
        if self.skipped:
            lines.append(f"skipped: {', '.join(self.skipped)}")
        if self.copied:
            lines.append(f"new: {', '.join(self.copied)}")
        if self.updated:
            lines.append(f"updated from the instructor: {', '.join(self.updated)}")
        if self.kept_edits:
            lines.append(f"NOT updated because you edited them: {', '.join(self.kept_edits)}")
        return "; ".join(lines) or "up to date"


def course_files(course: Course) -> list[str]:
    """What a student receives: the notebooks and any other non-hidden file but course.yaml."""
    return sorted(
        p.name for p in course.path.iterdir()
        if p.is_file() and p.name != "course.yaml" and not p.name.startswith(".")
    )


def sync_course(course: Course, dest: Path) -> SyncReport:
    """Copy new and untouched files into ``dest``; never overwrite a student's edit.

    Files are written private (0600). Links in the student's copy are never followed (a link
    could make the copy overwrite or disclose another file); they and unreadable files are
    reported in ``skipped``.
    """
    if dest.is_symlink():
        raise ValueError(f"{dest} is a link; course copies are not written through links")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    delivered = _read_delivered(dest)
    report = SyncReport()
    for name in course_files(course):
        source, target = course.path / name, dest / name
        try:
            source_data = _read_nofollow(source)
            source_hash = hashlib.sha256(source_data).hexdigest()
            if target.is_symlink():
                report.skipped.append(f"{name} (a link: links are never followed)")
                continue
            if not target.exists():
                if name in delivered:
                    # the student deleted it: respect that, `courses fetch` brings it back
                    report.unchanged.append(name)
                    continue
                _write_private(target, source_data)
                delivered[name] = source_hash
                report.copied.append(name)
                continue
            current = _sha256(target)
            if current == source_hash:
                delivered[name] = source_hash
                report.unchanged.append(name)
            elif current == delivered.get(name):
                _write_private(target, source_data)
                delivered[name] = source_hash
                report.updated.append(name)
            else:
                report.kept_edits.append(name)
        except OSError as e:
            report.skipped.append(f"{name} ({e.strerror or e})")
    _write_delivered(dest, delivered)
    updates = dest / UPDATES_FILE
    if updates.is_symlink():
        updates.unlink()
    if report.kept_edits:
        _write_private(
            updates,
            (f"# Course updates not applied to your files\n\n"
            f"Your instructor updated these notebooks of **{course.title}**, but you have edited "
            f"your copies, so they were left as you had them:\n\n"
            + "".join(f"- `{name}`\n" for name in report.kept_edits)
            + f"\nTo get the instructor's version next to yours, open a terminal and run\n\n"
              f"    aifactory courses fetch {course.slug} NOTEBOOK\n\n"
              f"It is saved as `NOTEBOOK.fresh.ipynb`; your own file is not touched.\n"
              f"(Add `--replace` to keep a backup of yours and take the fresh copy in its place.)\n").encode(),
        )
    elif updates.exists():
        updates.unlink()
    return report


def fetch_fresh(course: Course, notebook: str, dest: Path, replace: bool = False) -> Path:
    """A fresh copy of one course file; the student's own file is kept (or backed up)."""
    if notebook not in course_files(course):
        raise ValueError(f"course {course.slug!r} has no file {notebook!r} "
                         f"(files: {', '.join(course_files(course))})")
    if dest.is_symlink():
        raise ValueError(f"{dest} is a link; course copies are not written through links")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    source, target = course.path / notebook, dest / notebook
    if replace:
        if target.exists() or target.is_symlink():
            backup = target.with_name(f"{target.stem}.backup-{time.strftime('%Y%m%d-%H%M%S')}{target.suffix}")
            target.replace(backup)
        _write_private(target, _read_nofollow(source))
        _write_delivered(dest, _read_delivered(dest) | {notebook: _sha256(source)})
        return target
    fresh = target.with_name(f"{target.stem}.fresh{target.suffix}")
    if fresh.is_symlink():
        fresh.unlink()
    _write_private(fresh, _read_nofollow(source))
    return fresh


def publish(site: Site, target: Path) -> tuple[list[str], list[str]]:
    """Copy the site file and every valid course to ``target`` (world-readable).

    Published courses are what students receive; invalid courses are left out (and listed).
    Returns (published slugs, problems).
    """
    courses, problems = load_courses(site)
    staging = target.with_name(target.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "courses").mkdir(parents=True)
    # jobs only need the courses and limits, not the local demo's users
    raw = {k: v for k, v in site.raw.items() if k != "demo_users"} | {"courses_dir": "courses"}
    if site.data.registry and site.data.registry.is_file():
        # courses name registered datasets: the copy checks them against the same registry
        shutil.copy2(site.data.registry, staging / "datasets.yaml")
        raw["data"] = {"registry": "datasets.yaml", "root": str(site.data.root),
                       "group_prefix": site.data.group_prefix}
    (staging / "site.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for course in courses.values():
        shutil.copytree(course.path, staging / "courses" / course.slug,
                        ignore=shutil.ignore_patterns(".*", "__pycache__"))
    for path in [staging, *staging.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.replace(old)
    staging.replace(target)
    shutil.rmtree(old, ignore_errors=True)
    return sorted(courses), problems
