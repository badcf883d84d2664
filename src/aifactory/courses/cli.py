"""The ``aifactory courses`` command: check, list, sync, fetch and publish courses."""

from __future__ import annotations

import sys
from pathlib import Path

from aifactory.courses.check import SLUG_RE, load_course, load_courses
from aifactory.courses.model import Course
from aifactory.courses.sync import PUBLISHED_DIR, fetch_fresh, publish, sync_course
from aifactory.site import Site


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
    # the one course's folder (checked as `courses check` does); every session job of a course runs this
    folder = Path(site.courses_dir) / slug
    course = load_course(folder, site) if folder.is_dir() else None
    if course is None or course.slug != slug:
        courses, _ = load_courses(site)
        sys.exit(f"error: no valid course {slug!r} (courses: {', '.join(courses) or 'none'})")
    return course


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
