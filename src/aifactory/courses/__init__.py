"""Courses: metadata, the ``courses check`` validator, and distribution into a student's home.

A course is a folder ``courses/<slug>/`` with ``course.yaml`` and numbered notebooks
(see ``courses/README.md``). ``model`` holds the dataclasses, ``check`` loads and validates
courses, ``sync`` copies them into a student's ``~/courses/<slug>/`` without losing edits and
publishes them for jobs, ``cli`` is the ``aifactory courses`` command.
"""

from aifactory.courses.check import (
    LEVELS,
    NOTEBOOK_RE,
    PARAMETERS,
    SLUG_RE,
    check_notebook,
    load_course,
    load_courses,
)
from aifactory.courses.cli import add_cli, cli
from aifactory.courses.model import Course, CourseProblems, CourseResources
from aifactory.courses.sync import (
    PUBLISHED_DIR,
    STATE_FILE,
    UPDATES_FILE,
    SyncReport,
    course_files,
    fetch_fresh,
    publish,
    sync_course,
)

__all__ = [
    "LEVELS", "NOTEBOOK_RE", "PARAMETERS", "PUBLISHED_DIR", "SLUG_RE", "STATE_FILE", "UPDATES_FILE",
    "Course", "CourseProblems", "CourseResources", "SyncReport",
    "add_cli", "check_notebook", "cli", "course_files", "fetch_fresh", "load_course", "load_courses",
    "publish", "sync_course",
]
