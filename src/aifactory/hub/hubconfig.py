"""Apply the site file to a JupyterHub ``Config``: one small function per section.

``hub_config/jupyterhub_config.py`` calls ``apply_site(c, site)`` and nothing else; tests
apply it to a bare ``traitlets.config.Config()`` and assert on the result.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from aifactory.courses import PUBLISHED_DIR
from aifactory.security import read_secret_file
from aifactory.site import Site

CATALOGUE_PORT = int(os.environ.get("AIFACTORY_CATALOGUE_PORT", "10101"))
WORKSHOPS_PORT = int(os.environ.get("AIFACTORY_WORKSHOPS_PORT", "10102"))
USAGE_PORT = int(os.environ.get("AIFACTORY_USAGE_PORT", "10103"))
DATA_PORT = int(os.environ.get("AIFACTORY_DATA_PORT", "10104"))


def default_hub_bind_url(site: Site, port: int = 8081) -> str:
    """Where jobs call the hub back: 127.0.0.1, or the machine's side of the local cluster's
    network namespaces when it has nodes there (a real site sets AIFACTORY_HUB_BIND_URL)."""
    from aifactory.slurm.localcluster import hub_address

    return f"http://{hub_address(site)}:{port}"


def hub_tag(state_dir: str | None) -> str:
    """The comment of this hub's session jobs: one per hub state folder, stable across restarts, so
    that a test hub beside the demo (or two hubs on one cluster) never reconciles the other's jobs."""
    folder = str(Path(state_dir or os.getcwd()).resolve())
    return "aifactory-hub:" + hashlib.sha256(folder.encode()).hexdigest()[:12]


def workshops_db_url(state_dir: str | None) -> str:
    return f"sqlite:///{Path(state_dir or os.getcwd()).resolve() / 'workshops.sqlite'}"


def apply_spawner(c, site: Site, venv: str) -> None:
    c.JupyterHub.spawner_class = "aifactory"
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.named_server_limit_per_user = 5
    # sessions are Slurm jobs: a hub restart must not cancel them
    c.JupyterHub.cleanup_servers = False
    c.AIFactorySpawner.site_file = str(site.path)
    c.AIFactorySpawner.venv = venv
    c.AIFactorySpawner.job_site_file = f"{PUBLISHED_DIR}/site.yaml"
    c.AIFactorySpawner.max_queue_wait = site.max_queue_wait_seconds
    c.AIFactorySpawner.startup_timeout = site.startup_seconds
    # a start waiting in the Slurm queue counts as a spawn in progress: JupyterHub's default (100)
    # would turn away the 101st student of a busy morning with 429
    c.JupyterHub.concurrent_spawn_limit = site.concurrent_spawn_limit
    c.Spawner.default_url = "/lab"
    c.Spawner.environment = {"PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin"}
    c.Spawner.http_timeout = site.startup_seconds


def apply_authentication(c, site: Site) -> None:
    auth = site.authentication
    members = sorted({user for users in site.groups.values() for user in users})
    if auth.get("method", "pam") == "oidc":
        oidc = auth["oidc"]
        c.JupyterHub.authenticator_class = "generic-oauth"
        c.GenericOAuthenticator.client_id = oidc["client_id"]
        # secrets never live in the site file: the environment, or a file only the hub can read
        if oidc.get("client_secret_file"):
            c.GenericOAuthenticator.client_secret = read_secret_file(oidc["client_secret_file"])
        else:
            c.GenericOAuthenticator.client_secret = os.environ.get(oidc.get("client_secret_env", ""), "")
        c.GenericOAuthenticator.authorize_url = oidc["authorize_url"]
        c.GenericOAuthenticator.token_url = oidc["token_url"]
        c.GenericOAuthenticator.userdata_url = oidc["userdata_url"]
        c.GenericOAuthenticator.username_claim = oidc.get("username_claim", "preferred_username")
        c.GenericOAuthenticator.scope = list(oidc.get("scope", ["openid"]))
        c.GenericOAuthenticator.manage_groups = bool(oidc.get("manage_groups", False))
        c.GenericOAuthenticator.auth_state_groups_key = oidc.get("auth_state_groups_key", "")
        c.GenericOAuthenticator.allowed_groups = set(site.groups)
        c.GenericOAuthenticator.admin_groups = {"admins"}
    else:
        # PAM with login throttling per user and client address (aifactory/auth.py)
        c.JupyterHub.authenticator_class = "aifactory.hub.auth.ThrottledPAMAuthenticator"
        # HPC login nodes manage sessions themselves
        c.PAMAuthenticator.open_sessions = False
        c.Authenticator.allowed_users = set(members)
        # walk-in participants of workshops are hub users created by the workshops service;
        # ending the workshop deletes them (and PAM refuses their locked accounts)
        c.Authenticator.allow_existing_users = True
    c.Authenticator.admin_users = set(site.groups.get("admins", ()))


def apply_groups_and_roles(c, site: Site) -> None:
    c.JupyterHub.load_groups = {name: {"users": list(users)} for name, users in site.groups.items()}
    c.JupyterHub.load_roles = [
        {
            "name": "user",
            "description": "Every user: their own servers, the course and data catalogues",
            # the usage page itself says who may see which accounts (a clear 403 for the rest)
            "scopes": ["self", "access:services!service=catalogue", "access:services!service=usage",
                       "access:services!service=data"],
        },
        {
            "name": "instructor",
            "description": "See and manage the sessions of students",
            "groups": ["instructors"],
            "scopes": [
                "self",
                "list:users",
                "read:users!group=students",
                "read:servers!group=students",
                "delete:servers!group=students",
                "read:groups!group=students",
                "access:services!service=workshops",
            ],
        },
    ]


def apply_services(c, site: Site, venv: str, state_dir: str | None = None) -> None:
    python = f"{venv}/bin/python" if Path(f"{venv}/bin/python").exists() else sys.executable
    c.JupyterHub.services = [
        {
            "name": "idle-culler",
            "command": [python, "-m", "jupyterhub_idle_culler",
                        f"--timeout={site.culler_timeout_seconds}",
                        f"--cull-every={site.culler_every_seconds}"],
        },
        {
            "name": "reconcile",
            "command": [python, "-m", "aifactory.services.reconcile", "--tag", hub_tag(state_dir),
                        f"--interval={site.reconcile_seconds}"],
        },
        {
            "name": "catalogue",
            "display": True,
            "url": f"http://127.0.0.1:{CATALOGUE_PORT}",
            "command": [python, "-m", "aifactory.services.catalogue", "--site", str(site.path)],
            "oauth_no_confirm": True,
            # the login token carries the user's groups (instructors see the overview), their own
            # servers (running courses show "Open course") and, for the overview, at most what
            # the user's roles allow: the hub intersects these with the user's own scopes
            "oauth_client_allowed_scopes": ["read:users:groups!user", "read:servers!user", "list:users",
                                            "read:users", "read:servers"],
        },
        {
            "name": "data",
            "display": True,
            "url": f"http://127.0.0.1:{DATA_PORT}",
            "command": [python, "-m", "aifactory.services.data", "--site", str(site.path)],
            "oauth_no_confirm": True,
            # the page shows whether *you* may use each dataset: it needs the user's groups
            "oauth_client_allowed_scopes": ["read:users:groups!user"],
        },
        {
            "name": "workshops",
            "display": True,
            "url": f"http://127.0.0.1:{WORKSHOPS_PORT}",
            "command": [python, "-m", "aifactory.workshops.service", "--site", str(site.path),
                        "--db", workshops_db_url(state_dir),
                        "--helper", f"sudo -n {venv}/bin/aifactory-privileged"],
            "oauth_no_confirm": True,
            "oauth_client_allowed_scopes": ["read:users:groups!user"],
        },
        {
            "name": "usage",
            "display": True,
            "url": f"http://127.0.0.1:{USAGE_PORT}",
            "command": [python, "-m", "aifactory.services.usage", "--site", str(site.path)],
            "oauth_no_confirm": True,
            # the groups say who is an admin; the site file names the account managers
            "oauth_client_allowed_scopes": ["read:users:groups!user"],
        },
    ]
    c.JupyterHub.load_roles = [
        *c.JupyterHub.get("load_roles", []),
        {
            "name": "idle-culler",
            "services": ["idle-culler"],
            # culling stops the Slurm job and frees its GPUs
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        },
        {
            "name": "reconcile",
            "services": ["reconcile"],
            # the spawner state holds each server's job id; ghosts are stopped like the culler does
            "scopes": ["list:users", "read:users:name", "read:servers", "admin:server_state", "delete:servers"],
        },
        {
            "name": "workshops",
            "services": ["workshops"],
            # walk-in participants are hub users and groups made by the service; the overview
            # reads servers and asks the labs which notebooks are open (access:servers)
            "scopes": ["admin:users", "admin:groups", "list:users", "read:users", "read:servers",
                       "delete:servers", "access:servers"],
        },
    ]
    c.JupyterHub.default_url = "/hub/home"


def apply_site(c, site: Site, venv: str = "/opt/aifactory/venv", state_dir: str | None = None) -> None:
    """Everything the hub needs from the site file."""
    apply_spawner(c, site, venv)
    apply_authentication(c, site)
    apply_groups_and_roles(c, site)
    apply_services(c, site, venv, state_dir)
    c.AIFactorySpawner.workshops_db = workshops_db_url(state_dir)
    c.AIFactorySpawner.hub_tag = hub_tag(state_dir)
    if state_dir:
        state = Path(state_dir)
        c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
        c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
        c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
    chp = Path(venv).parent / "node_modules" / ".bin" / "configurable-http-proxy"
    if chp.exists():
        c.ConfigurableHTTPProxy.command = [str(chp)]
