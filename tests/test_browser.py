"""Headless Chromium (Debian's) driven by playwright, as a person would use the hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import chromium_path
from hubtools import PASSWORDS, user_jobs

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
    login(page, clean_hub, "researcher1")
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
    assert "/user/researcher1/lab" in page.url
    jobs = user_jobs("researcher1")
    assert len(jobs) == 1 and jobs[0]["gres"] == "gres:gpu:a100:1"


def test_refused_form_shows_the_reason_and_keeps_the_values(page, clean_hub):
    login(page, clean_hub, "student1")
    page.goto(f"{clean_hub.url}/hub/spawn")
    page.fill("#aif-hours", "7")  # more than the workshop QOS allows
    page.fill("#aif-cpus", "3")
    page.click("#spawn_form input[type=submit], #spawn_form button[type=submit]")
    error = page.wait_for_selector(".spawn-error-msg")
    assert "hours" in error.inner_text() and "outside the allowed range" in error.inner_text()
    assert page.input_value("#aif-cpus") == "3"
    page.screenshot(path=SCREENSHOTS / "form-refused.png", full_page=True)
    assert user_jobs("student1") == []


def test_student_starts_a_course_from_the_catalogue(page, clean_hub, site):
    from aifactory.courses import load_courses

    course = load_courses(site)[0]["ml-foundations"]
    login(page, clean_hub, "student2")
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
    assert user_jobs("student2") == []
    page.click("#spawn_form input[type=submit], #spawn_form button[type=submit]")
    page.wait_for_selector(LAB_READY, timeout=120_000)
    # the first notebook of the course is open in the main area
    page.wait_for_function(
        "name => [...document.querySelectorAll('.lm-TabBar-tab.lm-mod-current')]"
        ".some(t => t.textContent.includes(name))",
        arg=course.first_notebook, timeout=60_000,
    )
    page.screenshot(path=SCREENSHOTS / "course-lab.png")
    assert Path(f"/home/student2/courses/{course.slug}/{course.first_notebook}").is_file()
