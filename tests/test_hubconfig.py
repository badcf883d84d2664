"""The site applied to a bare traitlets Config: cheap, no hub needed."""

from __future__ import annotations

from traitlets.config import Config

from aifactory.hub.hubconfig import apply_site


def applied(site, **kwargs):
    c = Config()
    apply_site(c, site, **kwargs)
    return c


def test_spawner_and_named_servers(site):
    c = applied(site, state_dir="/srv/hub")
    assert c.JupyterHub.spawner_class == "aifactory"
    assert c.JupyterHub.allow_named_servers is True
    assert c.JupyterHub.cleanup_servers is False
    assert c.AIFactorySpawner.max_queue_wait == site.max_queue_wait_seconds
    assert c.AIFactorySpawner.site_file == str(site.path)
    assert c.JupyterHub.db_url == "sqlite:////srv/hub/jupyterhub.sqlite"
    assert c.JupyterHub.concurrent_spawn_limit == site.concurrent_spawn_limit == 200


def test_reconcile_service_with_the_hubs_own_tag(site):
    from aifactory.hub.hubconfig import hub_tag

    c = applied(site, state_dir="/srv/hub")
    services = {s["name"]: s for s in c.JupyterHub.services}
    command = services["reconcile"]["command"]
    assert command[command.index("--tag") + 1] == c.AIFactorySpawner.hub_tag == hub_tag("/srv/hub")
    assert hub_tag("/srv/hub") != hub_tag("/srv/other-hub")
    assert f"--interval={site.reconcile_seconds}" in command
    roles = {role["name"]: role for role in c.JupyterHub.load_roles}
    assert {"admin:server_state", "delete:servers", "list:users"} <= set(roles["reconcile"]["scopes"])


def test_pam_by_default_with_groups_and_admins(site):
    c = applied(site)
    assert c.JupyterHub.authenticator_class == "aifactory.hub.auth.ThrottledPAMAuthenticator"
    assert "student1" in c.Authenticator.allowed_users
    assert c.Authenticator.admin_users == {"admin1"}
    assert c.JupyterHub.load_groups["instructors"] == {"users": ["instructor1"]}
    roles = {role["name"]: role for role in c.JupyterHub.load_roles}
    assert "read:servers!group=students" in roles["instructor"]["scopes"]
    assert "delete:servers" in roles["idle-culler"]["scopes"]


def test_oidc_from_the_site_file(site, monkeypatch):
    import dataclasses

    monkeypatch.setenv("AIFACTORY_OIDC_SECRET", "s3cret")
    oidc_site = dataclasses.replace(site, authentication=dict(site.authentication, method="oidc"))
    c = applied(oidc_site)
    assert c.JupyterHub.authenticator_class == "generic-oauth"
    assert c.GenericOAuthenticator.client_secret == "s3cret"
    assert c.GenericOAuthenticator.username_claim == "preferred_username"
    assert "students" in c.GenericOAuthenticator.allowed_groups


def test_culler_and_catalogue_services(site):
    c = applied(site)
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert f"--timeout={site.culler_timeout_seconds}" in services["idle-culler"]["command"]
    assert services["catalogue"]["command"][-2:] == ["--site", str(site.path)]
