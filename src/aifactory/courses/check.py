"""Loading and checking courses: the ``aifactory courses check`` validator.

A course is a folder ``courses/<slug>/`` with ``course.yaml`` and numbered notebooks
(see ``courses/README.md``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from jupyterhub.slugs import is_valid_safe_slug

from aifactory.courses.model import Course, CourseProblems, CourseResources
from aifactory.site import Site

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,47}$")
NOTEBOOK_RE = re.compile(r"^\d{2}-[a-z0-9][a-z0-9-]*\.ipynb$")
LEVELS = ("beginner", "intermediate", "advanced")
PARAMETERS = ("DEVICE", "DATA_SIZE", "EPOCHS", "SEED")


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
