"""Courses: metadata, the ``courses check`` validator, and distribution into a student's home.

A course is a folder ``courses/<slug>/`` with ``course.yaml`` and numbered notebooks
(see ``courses/README.md``). Distribution copies the course into ``~/courses/<slug>/``
and never overwrites a file the student has changed: it remembers the hash of what it
delivered, updates only untouched files, and reports instructor updates that were held
back so the student can fetch a fresh copy.

Why not nbgitpuller: it needs the course as a git remote and resolves conflicts silently
(local changes win) without telling the student which updates were not applied.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from jupyterhub.slugs import is_valid_safe_slug

from aifactory.site import Site

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,47}$")
NOTEBOOK_RE = re.compile(r"^\d{2}-[a-z0-9][a-z0-9-]*\.ipynb$")
LEVELS = ("beginner", "intermediate", "advanced")
PARAMETERS = ("DEVICE", "DATA_SIZE", "EPOCHS", "SEED")
STATE_FILE = ".aifactory-sync.json"
# Jobs run as the user: they read courses from here, not from the (possibly private) source tree
PUBLISHED_DIR = "/opt/aifactory/published"
UPDATES_FILE = "UPDATES.md"


@dataclass(frozen=True)
class CourseResources:
    partition: str
    gpus: int
    gpu_type: str
    cpus: int
    memory_gb: int
    hours: int
    gpu_slices: int = 0  # shares of one GPU (Slurm gres/shard) instead of whole GPUs

    def as_options(self) -> dict:
        """The spawner options a course start asks for (validated like form input)."""
        return {
            "partition": self.partition,
            "gpus": self.gpus,
            "gpu_slices": self.gpu_slices,
            "gpu_type": self.gpu_type,
            "cpus": self.cpus,
            "memory_gb": self.memory_gb,
            "hours": self.hours,
        }


@dataclass(frozen=True)
class Course:
    slug: str
    path: Path
    title: str
    summary: str
    level: str
    audience: str
    estimated_duration_hours: float
    objectives: tuple[str, ...]
    prerequisites: tuple[str, ...]
    resources: CourseResources
    notebooks: tuple[str, ...]
    datasets: tuple[str, ...] = ()  # registered datasets (hub_config/datasets.yaml) the notebooks load

    @property
    def requires_gpu(self) -> bool:
        return self.resources.gpus > 0 or self.resources.gpu_slices > 0

    @property
    def first_notebook(self) -> str:
        return self.notebooks[0]

    @property
    def lab_path(self) -> str:
        """Where a course session opens, relative to the server: the student's copy of notebook 1."""
        return f"lab/tree/courses/{self.slug}/{self.first_notebook}"


@dataclass
class CourseProblems:
    errors: list[str] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")


def _field(raw: dict, key: str, kind, where: str, problems: CourseProblems, default=...):
    if key not in raw:
        if default is ...:
            problems.add(where, f"missing field '{key}'")
        return None if default is ... else default
    value = raw[key]
    if (kind in (int, float) and isinstance(value, bool)) or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        problems.add(where, f"field '{key}' must be {expected}, got {value!r}")
        return None
    return value


def _string_list(raw: dict, key: str, where: str, problems: CourseProblems, allow_empty=False):
    value = _field(raw, key, list, where, problems)
    if value is None:
        return ()
    if not value and not allow_empty:
        problems.add(where, f"field '{key}' must not be empty")
    for item in value:
        if not isinstance(item, str) or not item.strip():
            problems.add(where, f"field '{key}' must be a list of non-empty strings, got {item!r}")
            return ()
    return tuple(value)


def _check_resources(raw, where: str, site: Site, problems: CourseProblems) -> CourseResources | None:
    if not isinstance(raw, dict):
        problems.add(where, "field 'resources' must be a mapping")
        return None
    known = {"partition", "gpus", "gpu_slices", "gpu_type", "cpus", "memory_gb", "hours"}
    for key in sorted(set(raw) - known):
        problems.add(where, f"unknown field 'resources.{key}' (known: {', '.join(sorted(known))})")
    rwhere = f"{where}: resources"
    partition = _field(raw, "partition", str, where, problems)
    if partition is not None and partition not in site.partitions:
        problems.add(rwhere, f"unknown partition {partition!r} (site partitions: {', '.join(site.partitions)})")
        partition = None
    gpu_type = _field(raw, "gpu_type", str, where, problems, "any")
    if gpu_type is not None and gpu_type != "any" and gpu_type not in site.gpu_types:
        problems.add(rwhere, f"unknown GPU type {gpu_type!r} (site GPU types: any, {', '.join(site.gpu_types)})")
    values = {}
    for key in ("gpus", "cpus", "memory_gb", "hours"):
        value = _field(raw, key, int, where, problems)
        limit = site.limits[key]
        if value is not None and not limit.min <= value <= limit.max:
            problems.add(rwhere, f"{key}={value} is outside the site limits {limit.min}..{limit.max}")
        values[key] = value
    slices = _field(raw, "gpu_slices", int, where, problems, 0)
    if slices:
        limit = site.limits["gpu_slices"]
        if not site.total_gpu_slices:
            problems.add(rwhere, "gpu_slices: this site has no shared GPUs (gpu_types.*.shards)")
        elif not limit.min <= slices <= limit.max:
            problems.add(rwhere, f"gpu_slices={slices} is outside the site limits {limit.min}..{limit.max}")
        if values.get("gpus"):
            problems.add(rwhere, "ask for gpus or gpu_slices, not both")
        if partition and not site.partitions[partition].gpus:
            problems.add(rwhere, f"partition {partition!r} has no GPUs but the course asks for GPU slices")
    if partition and values.get("gpus") and not site.partitions[partition].gpus:
        problems.add(rwhere, f"partition {partition!r} has no GPUs but the course asks for {values['gpus']}")
    if partition and values.get("hours") and values["hours"] > site.partitions[partition].max_hours:
        problems.add(rwhere, f"hours={values['hours']} exceeds the {site.partitions[partition].max_hours} h "
                             f"limit of partition {partition!r}")
    if None in (partition, gpu_type, slices, *values.values()):
        return None
    return CourseResources(partition, values["gpus"], gpu_type, values["cpus"], values["memory_gb"],
                           values["hours"], slices)


def check_notebook(path: Path, problems: CourseProblems) -> None:
    """A notebook needs metadata.aifactory and a `parameters` cell defining the standard names."""
    where = str(path)
    try:
        notebook = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        problems.add(where, f"not a readable notebook ({e})")
        return
    meta = notebook.get("metadata", {}).get("aifactory")
    if not isinstance(meta, dict):
        problems.add(where, "missing notebook metadata 'aifactory' (objectives, duration_minutes, requires_gpu)")
    else:
        if not isinstance(meta.get("objectives"), list) or not meta["objectives"]:
            problems.add(where, "metadata.aifactory.objectives must be a non-empty list")
        duration = meta.get("duration_minutes")
        if isinstance(duration, bool) or not isinstance(duration, int) or duration <= 0:
            problems.add(where, "metadata.aifactory.duration_minutes must be a positive integer")
        if not isinstance(meta.get("requires_gpu"), bool):
            problems.add(where, "metadata.aifactory.requires_gpu must be true or false")
    cells = notebook.get("cells", [])
    parameter_cells = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not parameter_cells:
        problems.add(where, "no cell tagged 'parameters' (papermill needs one)")
        return
    source = "".join(parameter_cells[0].get("source", ""))
    for name in PARAMETERS:
        if not re.search(rf"^{name}\s*=", source, re.MULTILINE):
            problems.add(where, f"parameters cell does not define {name}")


def load_course(folder: Path, site: Site, problems: CourseProblems | None = None) -> Course | None:
    problems = problems if problems is not None else CourseProblems()
    before = len(problems.errors)
    slug = folder.name
    where = str(folder / "course.yaml")
    # the slug names the course's JupyterHub server: JupyterHub's own rule decides
    if not SLUG_RE.match(slug) or not is_valid_safe_slug(slug):
        problems.add(str(folder), f"folder name {slug!r} is not a valid course slug (2-30 lower-case "
                                  "letters, digits and single -, starting with a letter, not ending with -)")
        return None
    try:
        raw = yaml.safe_load((folder / "course.yaml").read_text())
    except FileNotFoundError:
        problems.add(where, "missing (every course folder needs a course.yaml)")
        return None
    except yaml.YAMLError as e:
        problems.add(where, f"not valid YAML: {e}")
        return None
    if not isinstance(raw, dict):
        problems.add(where, "must be a mapping of fields")
        return None
    known = {"title", "summary", "level", "audience", "estimated_duration_hours", "objectives",
             "prerequisites", "resources", "notebooks", "datasets"}
    for key in sorted(set(raw) - known):
        problems.add(where, f"unknown field '{key}'")
    title = _field(raw, "title", str, where, problems)
    summary = _field(raw, "summary", str, where, problems)
    level = _field(raw, "level", str, where, problems)
    if level is not None and level not in LEVELS:
        problems.add(where, f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    audience = _field(raw, "audience", str, where, problems)
    duration = _field(raw, "estimated_duration_hours", (int, float), where, problems)
    if duration is not None and duration <= 0:
        problems.add(where, "estimated_duration_hours must be positive")
    objectives = _string_list(raw, "objectives", where, problems)
    prerequisites = _string_list(raw, "prerequisites", where, problems, allow_empty=True)
    resources = _check_resources(raw.get("resources"), where, site, problems) if "resources" in raw \
        else problems.add(where, "missing field 'resources'")
    notebooks = _string_list(raw, "notebooks", where, problems)
    for name in notebooks:
        if not NOTEBOOK_RE.match(name):
            problems.add(where, f"notebook name {name!r} must look like 01-topic.ipynb")
        elif not (folder / name).is_file():
            problems.add(where, f"lists notebook {name!r} but {folder / name} does not exist")
        else:
            check_notebook(folder / name, problems)
    for extra in sorted(folder.glob("*.ipynb")):
        if extra.name not in notebooks:
            problems.add(str(extra), "notebook is not listed in course.yaml 'notebooks'")
    datasets = _check_datasets(raw, where, site, problems) if "datasets" in raw else ()
    if len(problems.errors) > before:
        return None
    return Course(slug, folder, title, summary, level, audience, duration, objectives, prerequisites,
                  resources, notebooks, datasets)


def _check_datasets(raw: dict, where: str, site: Site, problems: CourseProblems) -> tuple[str, ...]:
    """Every dataset is registered and readable by the course's audience.

    A course is offered to everyone who opens the catalogue, whatever their Slurm account, so
    every account of the site must be allowed to read its datasets (in practice: open datasets).
    """
    from aifactory.data.registry import RegistryError, load_registry

    names = _string_list(raw, "datasets", where, problems)
    if not names:
        return ()
    try:
        registry, _ = load_registry(site)
    except RegistryError as e:
        problems.add(where, f"datasets: the data registry is unreadable ({e})")
        return ()
    for name in names:
        dataset = registry.datasets.get(name)
        if dataset is None:
            problems.add(where, f"datasets: {name!r} is not a valid registered dataset "
                                f"(registered: {', '.join(registry.datasets) or 'none'}; aifactory data check)")
            continue
        refused = [account for account in site.accounts if not dataset.may_read([account], [])]
        if refused:
            problems.add(where, f"datasets: {name!r} is {dataset.sensitivity} (granted to {dataset.granted_by()}) "
                                f"but the course's audience includes accounts that may not read it: "
                                f"{', '.join(refused)}")
    return names


def load_courses(site: Site, courses_dir: Path | None = None) -> tuple[dict[str, Course], list[str]]:
    """All valid courses by slug, and the problems of the invalid ones."""
    courses_dir = Path(courses_dir or site.courses_dir)
    problems = CourseProblems()
    courses = {}
    if not courses_dir.is_dir():
        problems.add(str(courses_dir), "courses folder does not exist")
        return courses, problems.errors
    for folder in sorted(p for p in courses_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        course = load_course(folder, site, problems)
        if course:
            courses[course.slug] = course
    return courses, problems.errors


# ---------------------------------------------------------------- distribution


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


# ---------------------------------------------------------------- command line


def add_cli(subparsers, func) -> None:
    courses = subparsers.add_parser("courses", help="check, list and distribute courses")
    actions = courses.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="validate every course (metadata, notebooks, resources)")
    check.add_argument("--dir", type=Path, help="courses folder (default: the site's courses_dir)")
    actions.add_parser("list", help="list the valid courses")
    sync = actions.add_parser("sync", help="copy a course into your home, keeping your edits")
    sync.add_argument("slug")
    sync.add_argument("--dest", type=Path, help="default: ~/courses/SLUG")
    fetch = actions.add_parser("fetch", help="get a fresh copy of one course notebook")
    fetch.add_argument("slug")
    fetch.add_argument("notebook")
    fetch.add_argument("--dest", type=Path, help="default: ~/courses/SLUG")
    fetch.add_argument("--replace", action="store_true",
                       help="back up your file and put the fresh copy in its place")
    publish = actions.add_parser(
        "publish", help="copy the site file and the valid courses to a world-readable folder for jobs")
    publish.add_argument("--to", type=Path, default=Path(PUBLISHED_DIR))
    courses.set_defaults(func=func)


def _one_course(site: Site, slug: str) -> Course:
    if not SLUG_RE.match(slug):
        sys.exit(f"error: {slug!r} is not a course name")
    courses, _ = load_courses(site)
    if slug not in courses:
        sys.exit(f"error: no valid course {slug!r} (courses: {', '.join(courses) or 'none'})")
    return courses[slug]


def cli(args, site: Site) -> int:
    if args.action == "check":
        courses, errors = load_courses(site, args.dir)
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        print(f"{len(courses)} course(s) valid, {len(errors)} problem(s)")
        return 1 if errors else 0
    if args.action == "publish":
        published, problems = publish(site, args.to)
        for problem in problems:
            print(f"not published: {problem}", file=sys.stderr)
        print(f"published {len(published)} course(s) to {args.to}: {', '.join(published)}")
        return 0
    if args.action == "list":
        courses, errors = load_courses(site)
        for course in courses.values():
            gpu = f"{course.resources.gpus} GPU" if course.requires_gpu else "CPU only"
            print(f"{course.slug:28s} {course.level:13s} {course.estimated_duration_hours:>4} h  {gpu:9s} {course.title}")
        return 0
    course = _one_course(site, args.slug)
    dest = args.dest or Path.home() / "courses" / course.slug
    if args.action == "sync":
        try:
            report = sync_course(course, dest)
        except (ValueError, OSError) as e:
            sys.exit(f"error: {e}")
        print(f"course {course.slug} in {dest}: {report.summary()}")
        return 0
    try:
        path = fetch_fresh(course, args.notebook, dest, replace=args.replace)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"fresh copy written to {path}")
    return 0
