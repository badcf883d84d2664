"""Headless Chromium (Debian's) driven by playwright, as a person would use the hub."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import chromium_path
from hubtools import PASSWORDS, privileged, user_jobs

pytestmark = [pytest.mark.slurm, pytest.mark.hub, pytest.mark.browser, pytest.mark.slow]

SCREENSHOTS = Path(os.environ.get("AIFACTORY_SCREENSHOTS", "/tmp/aifactory-screenshots"))
LAB_READY = "#jp-main-dock-panel"


@pytest.fixture
def page(clean_hub):
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_path(),
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        yield page
        browser.close()


def login(page, hub, user):
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", PASSWORDS[user])
    page.click("#login_submit")
    page.wait_for_url("**/hub/**")


def test_login_fill_form_wait_and_see_jupyterlab(page, clean_hub):
    login(page, clean_hub, "t-researcher1")
    page.goto(f"{clean_hub.url}/hub/spawn")
    page.screenshot(path=SCREENSHOTS / "options-form.png", full_page=True)
    page.select_option("#aif-partition", "gpu")
    page.select_option("#aif-gpu-type", "a100")
    page.fill("#aif-gpus", "1")
    page.fill("#aif-cpus", "1")
    page.fill("#aif-memory", "1")
    page.fill("#aif-hours", "1")
    page.click("#spawn_form input[type=submit], #spawn_form button[type=submit]")
    # the progress page, then JupyterLab
    page.wait_for_selector(LAB_READY, timeout=120_000)
    page.screenshot(path=SCREENSHOTS / "jupyterlab.png")
    assert "/user/t-researcher1/lab" in page.url
    jobs = user_jobs("t-researcher1")
    assert len(jobs) == 1 and jobs[0]["gres"] == "gres:gpu:a100:1"


def test_refused_form_shows_the_reason_and_keeps_the_values(page, clean_hub):
    login(page, clean_hub, "t-student1")
    page.goto(f"{clean_hub.url}/hub/spawn")
    page.fill("#aif-hours", "7")  # more than the workshop QOS allows
    page.fill("#aif-cpus", "3")
    page.click("#spawn_form input[type=submit], #spawn_form button[type=submit]")
    error = page.wait_for_selector(".spawn-error-msg")
    assert "hours" in error.inner_text() and "outside the allowed range" in error.inner_text()
    assert page.input_value("#aif-cpus") == "3"
    page.screenshot(path=SCREENSHOTS / "form-refused.png", full_page=True)
    assert user_jobs("t-student1") == []


def test_student_starts_a_course_from_the_catalogue(page, clean_hub, site):
    from aifactory.courses import load_courses

    course = load_courses(site)[0]["ml-foundations"]
    login(page, clean_hub, "t-student2")
    page.goto(f"{clean_hub.url}/services/catalogue/")
    card = page.locator(f'article[data-course="{course.slug}"]')
    card.wait_for()
    assert course.title in card.inner_text()
    assert course.level in card.inner_text()
    page.screenshot(path=SCREENSHOTS / "catalogue.png", full_page=True)
    card.locator("a.start").click()
    # a link never starts a session: the form, filled in with the course, asks for confirmation
    page.wait_for_selector("#aif-confirm-course")
    page.screenshot(path=SCREENSHOTS / "course-confirm.png", full_page=True)
    assert user_jobs("t-student2") == []
    page.click("#spawn_form input[type=submit], #spawn_form button[type=submit]")
    page.wait_for_selector(LAB_READY, timeout=120_000)
    # the first notebook of the course is open in the main area
    page.wait_for_function(
        "name => [...document.querySelectorAll('.lm-TabBar-tab.lm-mod-current')]"
        ".some(t => t.textContent.includes(name))",
        arg=course.first_notebook, timeout=60_000,
    )
    page.screenshot(path=SCREENSHOTS / "course-lab.png")
    assert Path(f"/home/t-student2/courses/{course.slug}/{course.first_notebook}").is_file()


def test_instructor_runs_a_workshop_from_the_browser(clean_hub):
    """The instructor creates a workshop on the page; a walk-in logs in with the printed password,
    starts the course from the catalogue; the overview shows them running; the instructor ends it."""
    from datetime import datetime, timedelta

    from playwright.sync_api import sync_playwright

    hub = clean_hub
    course = "ml-foundations"
    start = datetime.now() - timedelta(minutes=1)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"])
        instructor = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        instructor.set_default_timeout(30_000)
        login(instructor, hub, "t-instructor1")
        instructor.goto(f"{hub.url}/services/workshops/")
        instructor.fill("#ws-title", "Browser workshop")
        instructor.fill("#ws-name", "browserws")
        instructor.select_option("#ws-course", course)
        instructor.fill("#ws-start", start.strftime("%Y-%m-%dT%H:%M"))
        instructor.fill("#ws-end", (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
        instructor.fill("#ws-participants", "t-student1")
        instructor.fill("#ws-walkins", "1")
        instructor.fill("#ws-cpus", "1")
        instructor.fill("#ws-memory", "1")
        instructor.screenshot(path=SCREENSHOTS / "workshop-new.png", full_page=True)
        instructor.click("#ws-create")
        instructor.wait_for_selector("#credentials", timeout=120_000)
        instructor.screenshot(path=SCREENSHOTS / "workshop-created.png", full_page=True)
        walkin = instructor.inner_text("#credentials td.login")
        password = instructor.inner_text("#credentials td.password")
        assert walkin == "wk-browserws-01"
        try:
            participant = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            participant.set_default_timeout(30_000)
            participant.goto(f"{hub.url}/hub/login")
            participant.fill("#username_input", walkin)
            participant.fill("#password_input", password)
            participant.click("#login_submit")
            participant.wait_for_url("**/hub/**")
            participant.goto(f"{hub.url}/services/catalogue/")
            participant.locator(f'article[data-course="{course}"] a.start').click()
            participant.wait_for_selector("#aif-confirm-course")
            # the confirmation shows the workshop's reservation
            assert participant.input_value("#aif-reservation") == "ws-browserws"
            participant.click("#spawn_form input[type=submit], #spawn_form button[type=submit]")
            participant.wait_for_selector(LAB_READY, timeout=120_000)
            jobs = user_jobs(walkin)
            assert len(jobs) == 1 and jobs[0]["state"] == "RUNNING"

            instructor.click("text=Go to the workshop overview")
            row = instructor.locator(f'#participants tr[data-user="{walkin}"]')
            try:
                row.wait_for()
            except Exception:
                instructor.screenshot(path=SCREENSHOTS / "workshop-overview-failed.png", full_page=True)
                raise
            instructor.wait_for_selector(f'#participants tr[data-user="{walkin}"][data-state="running"]',
                                         timeout=30_000)
            assert "ws-browserws" in row.inner_text()
            assert instructor.locator('#participants tr[data-user="t-student1"]').get_attribute(
                "data-state") == "stopped"
            instructor.screenshot(path=SCREENSHOTS / "workshop-overview.png", full_page=True)
            instructor.on("dialog", lambda dialog: dialog.accept())
            instructor.click("#end")
            instructor.wait_for_selector("#message", timeout=120_000)
            assert "has ended" in instructor.inner_text("#message")
            assert user_jobs(walkin) == []
        finally:
            privileged("walkin-remove", "--users", walkin)
            subprocess.run(["scontrol", "delete", "ReservationName=ws-browserws"], capture_output=True)
        browser.close()
