"""Workshops without a cluster: the request validator, the privileged helper's grammar, the record,
and how a booking turns a participant's course start into a session in the reservation."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hubtools import privileged as run_privileged

from aifactory.courses import load_courses
from aifactory.hub import batchscript
from aifactory.hub.options import OptionsError, UserContext, validate
from aifactory.slurm.queries import Association, Reservation
from aifactory.workshops import privileged
from aifactory.workshops.plan import WorkshopError, check_extend, plan_workshop
from aifactory.workshops.store import Participant, Store, Workshop, WorkshopBooking

NOW = datetime(2026, 11, 28, 8, 30)
USERS = {"student1", "student2", "researcher1", "instructor1"}


@pytest.fixture(scope="module")
def courses(site):
    return load_courses(site)[0]


def request(**overrides):
    raw = {"name": "dl-nov28", "title": "Deep learning hands-on (28 Nov)", "course": "deep-learning-pytorch",
           "start": "2026-11-28T09:00", "end": "2026-11-28T12:00", "participants": "student1, student2",
           "walkins": 4}
    raw.update(overrides)
    return raw


def plan(site, courses, booked=(), **overrides):
    return plan_workshop(request(**overrides), site, courses, USERS, list(booked), now=NOW)


def test_a_valid_request_becomes_a_plan_with_the_course_resources(site, courses):
    p = plan(site, courses)
    assert p.users == ("student1", "student2", "wk-dl-nov28-01", "wk-dl-nov28-02", "wk-dl-nov28-03",
                       "wk-dl-nov28-04")
    assert (p.reservation, p.group, p.size) == ("ws-dl-nov28", "workshop-dl-nov28", 6)
    # the deep-learning course books a GPU slice, not a whole GPU
    assert (p.gpus, p.gpu_slices) == (0, 1)
    assert p.cores == 6 * p.cpus
    assert p.start == datetime(2026, 11, 28, 9, 0) and p.end == datetime(2026, 11, 28, 12, 0)


def test_a_start_a_few_minutes_ago_means_now(site, courses):
    p = plan(site, courses, start="2026-11-28T08:25", end="2026-11-28T09:30")
    assert p.start == NOW


REFUSALS = [
    ({"course": "no-such-course"}, "course", "unknown course"),
    ({"participants": "student1, mallory"}, "participants", "unknown user(s): mallory"),
    ({"participants": "student1, student1"}, "participants", "listed twice"),
    ({"participants": "student1;id"}, "participants", "not a valid user name"),
    ({"participants": "", "walkins": 0}, "participants", "add participants"),
    ({"walkins": 41}, "walkins", "outside the allowed range"),
    ({"walkins": 39}, "participants", "at most 40"),
    ({"gpus": 1, "walkins": 3}, "participants", "5 participants x 1 GPU = 5 GPUs, but the site has 4"),
    ({"gpu_slices": 2, "walkins": 20}, "participants", "44 slices, but the site has 32"),
    ({"gpus": 1, "gpu_slices": 1}, "gpu_slices", "not both"),
    ({"gpus": 2}, "gpus", "outside the allowed range 0..1"),
    ({"end": "2026-11-28T08:00"}, "end", "end after it starts"),
    ({"start": "2026-11-27T09:00", "end": "2026-11-27T12:00"}, "end", "in the past"),
    ({"start": "2026-11-28T07:00"}, "start", "in the past"),
    ({"end": "2026-11-28T23:00"}, "end", "at most 8 hours"),
    ({"start": "tomorrow 9"}, "start", "not a date and time"),
    ({"name": "x;rm -rf"}, "name", "lower-case letters"),
    ({"name": "../../etc"}, "name", "lower-case letters"),
    ({"title": "<script>alert(1)</script>"}, "title", "no HTML or shell characters"),
    ({"title": "Workshop $(id)"}, "title", "no HTML or shell characters"),
    ({"title": ""}, "title", "1 to 120"),
    ({"cpus": "four"}, "cpus", "whole number"),
    ({"reservation": "steal-it"}, "reservation", "unknown field"),
]


@pytest.mark.parametrize("overrides,field,message", REFUSALS, ids=[f"{f}-{m[:20]}" for _, f, m in REFUSALS])
def test_bad_requests_are_refused_naming_the_field(site, courses, overrides, field, message):
    with pytest.raises(WorkshopError) as e:
        plan(site, courses, **overrides)
    assert e.value.field == field
    assert message in str(e.value)


def _booked(name, size, gpus=0, gpu_slices=0, cpus=1, start="2026-11-28T09:00", end="2026-11-28T12:00"):
    w = Workshop(name=name, title=name, course="ml-foundations", owner="instructor1",
                 start=datetime.fromisoformat(start), end=datetime.fromisoformat(end), gpus=gpus,
                 gpu_slices=gpu_slices, cpus=cpus, memory_gb=1, reservation=f"ws-{name}", group=f"workshop-{name}",
                 state="scheduled")
    w.participants = [Participant(username=f"u{i}") for i in range(size)]
    return w


def test_workshops_in_the_same_window_share_the_capacity(site, courses):
    other = _booked("other", 3, gpus=1)
    with pytest.raises(WorkshopError, match="3 are booked by 'other'"):
        plan(site, courses, [other], gpus=1, walkins=0)  # 3 + 2 whole GPUs > 4
    # whole GPUs taken by another workshop leave fewer slices: 3 GPUs x 8 = 24 slices are gone
    with pytest.raises(WorkshopError, match="slices"):
        plan(site, courses, [other], gpu_slices=1, walkins=8)
    # the same booking later in the day does not count
    later = _booked("later", 3, gpus=1, start="2026-11-28T13:00", end="2026-11-28T15:00")
    assert plan(site, courses, [later], gpus=1, walkins=0).gpus == 1


def test_cores_of_overlapping_workshops_add_up(site, courses):
    total = sum(node.cpus for node in site.nodes)  # the demo nodes' advertised cores
    other = _booked("big", total // 8 - 1, cpus=8)  # all but 8 to 15 of them
    with pytest.raises(WorkshopError) as e:
        plan(site, courses, [other], cpus=2)  # 6 x 2 more than are left
    assert e.value.field == "cpus"


def test_extend_takes_whole_minutes_within_limits():
    workshop = _booked("x", 1)
    assert check_extend("30", workshop) == 30
    for bad in ("0", "-5", "1000", "ten", None, True):
        with pytest.raises(WorkshopError):
            check_extend(bad, workshop)
    workshop.state = "ended"
    with pytest.raises(WorkshopError, match="has ended"):
        check_extend(10, workshop)


# ---------------------------------------------------------------- the privileged helper's grammar

BAD_HELPER_ARGS = [
    ["reservation-create", "--name", "ws-x;id", "--start", "2026-11-28T09:00", "--end", "2026-11-28T10:00",
     "--users", "a", "--cores", "1", "--partition", "gpu"],
    ["reservation-create", "--name", "other-name", "--start", "2026-11-28T09:00", "--end", "2026-11-28T10:00",
     "--users", "a", "--cores", "1", "--partition", "gpu"],
    ["reservation-create", "--name", "ws-abc", "--start", "now", "--end", "2026-11-28T10:00",
     "--users", "a", "--cores", "1", "--partition", "gpu"],
    ["reservation-create", "--name", "ws-abc", "--start", "2026-11-28T09:00", "--end", "2026-11-28T10:00",
     "--users", "a,$(id)", "--cores", "1", "--partition", "gpu"],
    ["reservation-create", "--name", "ws-abc", "--start", "2026-11-28T09:00", "--end", "2026-11-28T10:00",
     "--users", "a", "--cores", "-1", "--partition", "gpu"],
    ["reservation-extend", "--name", "ws-abc", "--end", "2026-11-28T10:00", "--minutes", "99999"],
    ["walkin-create", "--workshop", "abc", "--count", "100", "--account", "uni-teaching", "--qos", "workshop",
     "--expires", "2026-11-29"],
    ["walkin-create", "--workshop", "abc", "--count", "2", "--account", "uni teaching", "--qos", "workshop",
     "--expires", "2026-11-29"],
    ["reservation-create", "--name", "ws-abc", "--start", "2026-11-28T09:00", "--end", "2026-11-28T10:00",
     "--users", "a", "--cores", "4,x", "--partition", "gpu", "--node-names", "vm,node2"],
    ["reservation-create", "--name", "ws-abc", "--start", "2026-11-28T09:00", "--end", "2026-11-28T10:00",
     "--users", "a", "--cores", "4", "--partition", "gpu", "--node-names", "vm;id"],
    ["walkin-disable", "--users", "root"],
    ["walkin-remove", "--users", "student1"],
    ["walkin-remove", "--users", "wk-abc-01,../../etc"],
    ["delete-everything"],
]


@pytest.mark.parametrize("argv", BAD_HELPER_ARGS, ids=[" ".join(a[:3])[:40] for a in BAD_HELPER_ARGS])
def test_the_privileged_helper_refuses_arguments_outside_its_grammar(argv):
    with pytest.raises(SystemExit) as e:
        privileged.parser().parse_args(argv)
    assert e.value.code == 2


def test_the_privileged_helper_refuses_to_disable_a_user_that_is_no_walkin():
    # well-formed name, but not a member of aifactory-walkin: refused before usermod runs
    result = run_privileged("walkin-disable", "--users", "wk-nobody-01")
    assert result.returncode == 2 and "not a walk-in account" in result.stderr


# ---------------------------------------------------------------- the record and the spawner's view


def test_bookings_are_for_participants_of_open_workshops_only(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'w.sqlite'}")
    assert oct((tmp_path / "w.sqlite").stat().st_mode & 0o777) == "0o600"
    now = datetime.now()
    with store.session() as session:
        for name, start, end in (("open", now - timedelta(minutes=5), now + timedelta(hours=1)),
                                 ("later", now + timedelta(hours=2), now + timedelta(hours=3))):
            w = _booked(name, 0, gpu_slices=1, start=start.isoformat(), end=end.isoformat())
            w.course = "deep-learning-pytorch" if name == "open" else "ml-foundations"
            w.participants = [Participant(username="student1")]
            session.add(w)
        session.commit()
    bookings = store.bookings_for("student1")
    assert list(bookings) == ["deep-learning-pytorch"]
    assert bookings["deep-learning-pytorch"].reservation == "ws-open"
    assert 55 <= bookings["deep-learning-pytorch"].minutes_left <= 60
    assert store.bookings_for("student2") == {}
    assert store.upcoming_for("student1", "ml-foundations").name == "later"


def _ctx(site, courses, state="ACTIVE", bookings=None):
    reservation = Reservation("ws-dl", state, "2026-11-28T09:00:00", "2026-11-28T12:00:00",
                              ("student1",), (), "gpu")
    return UserContext("student1", [Association("uni-teaching", ("workshop", "interactive"), "workshop", True)],
                       {"ws-dl": reservation}, {}, courses, None, bookings or {})


def _booking(minutes=45):
    now = datetime.now()
    return WorkshopBooking("dl", "DL", "ws-dl", now - timedelta(minutes=10), now + timedelta(minutes=minutes),
                           0, 1, 1, 2)


def test_a_course_start_during_the_workshop_lands_in_its_reservation(site, courses):
    ctx = _ctx(site, courses, bookings={"deep-learning-pytorch": _booking()})
    session = validate({"course": "deep-learning-pytorch"}, site, ctx)
    assert session.reservation == "ws-dl"
    assert (session.gpus, session.gpu_slices, session.cpus, session.memory_gb) == (0, 1, 1, 2)
    assert 43 <= session.minutes <= 45  # the session ends with the window
    script = batchscript.render(session, batchscript.JobContext("student1", "/home/student1", "x", []))
    assert "#SBATCH --reservation=ws-dl\n" in script
    assert "#SBATCH --gres=shard:1\n" in script
    assert f"#SBATCH --time={session.time_limit}\n" in script and session.time_limit.startswith("00:4")


def test_the_workshop_share_wins_over_the_form_values(site, courses):
    # the confirmation form posts every field; the reservation was sized for the workshop's share
    ctx = _ctx(site, courses, bookings={"deep-learning-pytorch": _booking()})
    form = {"course": "deep-learning-pytorch", "partition": "gpu", "gpus": "1", "gpu_slices": "0", "cpus": "4",
            "memory_gb": "8", "hours": "3", "reservation": ""}
    session = validate(form, site, ctx)
    assert (session.reservation, session.gpus, session.gpu_slices, session.cpus, session.memory_gb) == \
        ("ws-dl", 0, 1, 1, 2)


def test_outside_the_window_the_course_start_queues_normally(site, courses):
    # the reservation exists but has not started: no reservation, the course's own resources
    ctx = _ctx(site, courses, state="INACTIVE", bookings={"deep-learning-pytorch": _booking()})
    session = validate({"course": "deep-learning-pytorch"}, site, ctx)
    assert session.reservation == "" and session.minutes == 0
    assert session.time_limit == f"{courses['deep-learning-pytorch'].resources.hours:02d}:00:00"
    # another course than the workshop's is not placed in it either
    ctx = _ctx(site, courses, bookings={"deep-learning-pytorch": _booking()})
    assert validate({"course": "ml-foundations"}, site, ctx).reservation == ""


def test_gpu_slice_options_are_validated(site, courses):
    ctx = _ctx(site, courses)
    session = validate({"gpu_slices": 2, "gpus": 0}, site, ctx)
    assert session.gres == "shard:2"
    assert validate({"gpu_slices": "1", "gpus": "0", "gpu_type": "h100"}, site, ctx).gres == "shard:h100:1"
    for raw, message in (({"gpu_slices": 1, "gpus": 1}, "not both"),
                         ({"gpu_slices": 3, "gpus": 0}, "QOS 'workshop' allows at most 2"),
                         ({"gpu_slices": 9, "gpus": 0}, "outside the allowed range"),
                         ({"gpu_slices": 1, "gpus": 0, "partition": "cpu"}, "has no GPUs")):
        with pytest.raises(OptionsError, match=message) as e:
            validate(raw, site, ctx)
        assert e.value.field == "gpu_slices"
