"""The single validator (form, REST API, courses) and the options form."""

from __future__ import annotations

import pytest

from aifactory.courses import load_courses
from aifactory.hub.options import OptionsError, UserContext, normalise_form, render_form, validate
from aifactory.slurm.queries import Association, GpuAvailability, Reservation

STUDENT = [Association("uni-teaching", ("interactive", "workshop"), "workshop", True)]
INSTRUCTOR = [
    Association("uni-teaching", ("interactive", "workshop"), "workshop", True),
    Association("uni-research", ("interactive",), "interactive"),
]
WORKSHOP = Reservation("ml-workshop", "ACTIVE", "2026-11-27T09:00:00", "2026-11-27T17:00:00",
                       (), ("uni-teaching",), "gpu")
OTHER = Reservation("hospital-run", "ACTIVE", "2026-11-27T09:00:00", "2026-11-27T17:00:00",
                    ("partner9",), (), "gpu")


@pytest.fixture
def student(site):
    courses, _ = load_courses(site)
    return UserContext("student1", STUDENT, {"ml-workshop": WORKSHOP, "hospital-run": OTHER},
                       {"h100": GpuAvailability("h100", 2, 1)}, courses)


def test_defaults_are_sensible(site, student):
    session = validate({}, site, student)
    assert session.partition == "gpu" and session.account == "uni-teaching" and session.qos == "workshop"
    assert session.gpus == site.limits["gpus"].default
    assert session.hours == site.limits["hours"].default


def test_numbers_arrive_as_strings_from_forms_and_ints_from_json(site, student):
    assert validate({"gpus": "1", "cpus": "4"}, site, student).cpus == 4
    assert validate({"gpus": 1, "cpus": 4}, site, student).cpus == 4


def test_cpu_partition_defaults_to_no_gpu(site, student):
    assert validate({"partition": "cpu"}, site, student).gpus == 0


@pytest.mark.parametrize(
    "raw,field,words",
    [
        ({"partition": "gpu; id"}, "partition", "not allowed"),
        ({"partition": "bigmem"}, "partition", "not available"),
        ({"account": "uni-research"}, "account", "not available"),
        ({"qos": "interactive\n"}, "qos", "not allowed"),
        ({"qos": "normal"}, "qos", "not available"),
        ({"gpus": 2}, "gpus", "QOS 'workshop' allows at most 1"),
        ({"gpus": "two"}, "gpus", "whole number"),
        ({"gpus": 1.0}, "gpus", "whole number"),
        ({"gpus": [1]}, "gpus", "whole number"),
        ({"gpus": None}, "gpus", "whole number"),
        ({"hours": 5}, "hours", "outside the allowed range 1..4"),  # the workshop QOS allows 4 h
        ({"memory_gb": 0}, "memory_gb", "outside"),
        ({"cpus": 99}, "cpus", "outside"),
        ({"gpu_type": "v100"}, "gpu_type", "not available"),
        ({"reservation": "hospital-run"}, "reservation", "not available"),
        ({"course": "no-such-course"}, "course", "not available"),
        ({"course": "../etc"}, "course", "not a valid name"),
        ({"mem": 4}, "mem", "unknown option"),
        ({"partition": 5}, "partition", "text value"),
    ],
)
def test_refusals_name_the_field(site, student, raw, field, words):
    with pytest.raises(OptionsError) as error:
        validate(raw, site, student)
    assert error.value.field == field
    assert words in str(error.value)


def test_not_a_mapping(site, student):
    with pytest.raises(OptionsError, match="JSON object"):
        validate(["gpus"], site, student)


def test_user_without_associations_is_told_why(site):
    with pytest.raises(OptionsError, match="no Slurm account"):
        validate({}, site, UserContext("nobody", []))


def test_reservation_that_admits_the_account(site, student):
    assert validate({"reservation": "ml-workshop"}, site, student).reservation == "ml-workshop"


def test_course_resources_are_the_defaults_and_still_validated(site, student):
    course = student.courses["ml-foundations"]
    session = validate({"course": "ml-foundations"}, site, student)
    assert (session.partition, session.gpus, session.hours) == (
        course.resources.partition, course.resources.gpus, course.resources.hours)
    with pytest.raises(OptionsError, match="gpus"):
        validate({"course": "ml-foundations", "partition": "cpu", "gpus": 1}, site, student)


def test_qos_of_another_account(site):
    ctx = UserContext("instructor1", INSTRUCTOR)
    assert validate({"account": "uni-research"}, site, ctx).qos == "interactive"
    with pytest.raises(OptionsError, match="QOS for account 'uni-research'"):
        validate({"account": "uni-research", "qos": "workshop"}, site, ctx)


def test_form_data_must_be_single_values():
    assert normalise_form({"gpus": ["1"], "_xsrf": ["t"]}) == {"gpus": "1"}
    with pytest.raises(OptionsError, match="exactly once"):
        normalise_form({"gpus": ["1", "2"]})


def test_form_shows_own_accounts_free_gpus_and_usable_reservations(site, student):
    html = render_form(site, student)
    assert 'value="uni-teaching"' in html and 'value="uni-research"' not in html
    assert "1 of 2 free now" in html
    assert 'value="ml-workshop"' in html and "hospital-run" not in html
    for partition in site.partitions:
        assert f'value="{partition}"' in html


def test_form_keeps_previous_values_escaped(site, student):
    html = render_form(site, student, previous={"cpus": '3"><script>alert(1)</script>', "hours": "2"})
    assert "<script>alert(1)" not in html
    assert 'value="2"' in html


def test_empty_values_mean_the_defaults(site, student):
    session = validate({"partition": "", "account": "", "qos": "", "gpu_type": "", "reservation": ""}, site, student)
    assert (session.partition, session.account, session.qos, session.gpu_type) == (
        "gpu", "uni-teaching", "workshop", "any")
