"""The data catalogue: a hub-authenticated service at ``/services/data/``.

One card per registered dataset with its licence, provenance, sensitivity and hosting, whether
the signed-in user may use it (their Slurm accounts and hub groups against the registry) and a
snippet to load it. The page only describes: who reads what is enforced by the data root's unix
permissions (``aifactory data publish``).
"""

from __future__ import annotations

import os
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from jupyterhub.services.auth import HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import web

from aifactory.data.registry import Dataset, RegistryError, load_registry
from aifactory.services.hubservice import main_with_site, site_page_app
from aifactory.site import Site
from aifactory.slurm import queries as slurm

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parents[1] / "templates"),
    autoescape=select_autoescape(["html"]),
)


def load_snippet(dataset: Dataset) -> str:
    file_arg = "" if len(dataset.files) == 1 else f', "{dataset.files[0].name}"'
    return (f"import aifactory.data\n"
            f"df = aifactory.data.load(\"{dataset.name}\"{file_arg})\n"
            f"aifactory.data.info(\"{dataset.name}\")  # licence, provenance, checksums")


def render_data_page(site: Site, username: str, accounts: list[str], groups: list[str], hub_prefix: str,
                     accounts_known: bool = True) -> str:
    try:
        registry, problems = load_registry(site)
        datasets = list(registry.datasets.values())
    except RegistryError as e:
        datasets, problems = [], [str(e)]
    cards = [{"dataset": d, "may_use": d.may_read(accounts, groups), "snippet": load_snippet(d)} for d in datasets]
    return _templates.get_template("data.html").render(
        cards=cards, username=username, hub_prefix=hub_prefix, accounts=accounts, groups=groups,
        accounts_known=accounts_known, problems=len(problems),
        catalogue_url=url_path_join(hub_prefix[: -len("hub/")], "services/catalogue/"),
    )


class DataHandler(HubOAuthenticated, web.RequestHandler):
    def initialize(self, site: Site):
        self.site = site

    @web.authenticated
    async def get(self):
        user = self.get_current_user()
        accounts_known = True
        try:
            accounts = [a.account for a in await slurm.user_associations(user["name"])]
        except (slurm.SlurmUnavailable, slurm.SlurmCommandError):
            accounts, accounts_known = [], False
        hub_prefix = os.environ.get("JUPYTERHUB_BASE_URL", "/") + "hub/"
        self.finish(render_data_page(self.site, user["name"], accounts, list(user.get("groups", [])), hub_prefix,
                                     accounts_known))


def make_app(site: Site) -> web.Application:
    return site_page_app("/services/data/", [("", DataHandler)], site)


def main() -> None:
    main_with_site(make_app, "http://127.0.0.1:10104", __doc__)


if __name__ == "__main__":
    main()
