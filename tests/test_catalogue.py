"""The catalogue on a real hub: running courses show "Open course"; the overview shows each
viewer only the sessions their own hub roles let them see."""

from __future__ import annotations

import re

import pytest
import requests

pytestmark = [pytest.mark.slurm, pytest.mark.hub, pytest.mark.slow]
CPU = {"partition": "cpu", "gpus": 0, "cpus": 1, "memory_gb": 1, "hours": 1}


def catalogue_page(hub, user: str) -> str:
    browser = hub.login(user)  # then the catalogue's OAuth login, as a browser does
    page = browser.get(f"{hub.url}/services/catalogue/", timeout=30)
    assert page.status_code == 200, page.text[:300]
    return page.text


def test_a_running_course_shows_open_course(clean_hub):
    hub = clean_hub
    course = "ml-foundations"
    assert hub.spawn("t-student2", {"course": course}, name=course).status_code in (201, 202)
    hub.wait_ready("t-student2", course)
    page = catalogue_page(hub, "t-student2")
    card = re.search(rf'<article[^>]*data-course="{course}".*?</article>', page, re.S).group(0)
    assert 'class="button open"' in card and f"/user/t-student2/{course}/" in card
    other = re.search(r'<article[^>]*data-course="ai-healthcare".*?</article>', page, re.S).group(0)
    assert 'class="button open"' not in other


def test_the_overview_shows_only_what_the_viewer_may_see(clean_hub):
    hub = clean_hub
    assert hub.spawn("t-student1", CPU).status_code in (201, 202)
    assert hub.spawn("t-researcher1", CPU, name="research").status_code in (201, 202)
    hub.wait_ready("t-student1")
    hub.wait_ready("t-researcher1", "research")

    def overview(user):
        return requests.get(f"{hub.url}/services/catalogue/running", timeout=30,
                            headers={"Authorization": f"token {hub.token(user)}"})

    instructor = overview("t-instructor1")
    assert instructor.status_code == 200
    assert 'data-user="t-student1"' in instructor.text
    # a researcher's named server, its account and job are not the instructor's business
    assert "t-researcher1" not in instructor.text and "uni-research" not in instructor.text
    admin = overview("t-admin1")
    assert 'data-user="t-researcher1"' in admin.text and 'data-user="t-student1"' in admin.text
    assert overview("t-student1").status_code == 403
    # through the browser (the OAuth login token), the same
    browser = hub.login("t-instructor1")
    page = browser.get(f"{hub.url}/services/catalogue/running", timeout=30)
    assert page.status_code == 200 and "t-researcher1" not in page.text and "t-student1" in page.text
