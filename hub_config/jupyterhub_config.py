# The AI-factory hub: load the site file, validate it, apply it. Site facts live in site.yaml.
import os
import sys

from aifactory.hub.hubconfig import apply_site, default_hub_bind_url
from aifactory.security import make_private
from aifactory.site import SiteError, load_site

c = get_config()  # noqa: F821

try:
    site = load_site(os.environ.get("AIFACTORY_SITE", os.path.join(os.path.dirname(__file__), "site.yaml")))
except SiteError as e:
    sys.exit(f"site file error: {e}")

state_dir = os.environ.get("AIFACTORY_STATE", os.getcwd())
# everything the hub writes (database, cookie secret, pid files) is private, and so is its state
os.umask(0o077)
if "AIFACTORY_STATE" in os.environ:
    make_private(state_dir)
apply_site(c, site, venv=os.environ.get("AIFACTORY_VENV", "/opt/aifactory/venv"), state_dir=state_dir)
c.JupyterHub.bind_url = os.environ.get("AIFACTORY_BIND_URL", "http://127.0.0.1:8000")
c.JupyterHub.hub_bind_url = os.environ.get("AIFACTORY_HUB_BIND_URL") or default_hub_bind_url(site)
