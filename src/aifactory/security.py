"""Private by default: secrets, private state, request limits, link-started sessions.

- Demo passwords are generated when the local cluster creates its users and kept in a
  root-only file (``/etc/aifactory/demo-passwords.yaml``, 0600 in a 0700 folder), never in the
  site file; other secrets (the OIDC client secret) come from the environment or a 0600 file.
- The hub's state folder (database, cookie secret, log) is 0700 and its files 0600.
- Spawn requests: a GET of ``/hub/spawn/...?opt-...`` (a link, maybe from another site) only
  shows the form filled in with the link's options; the start is the form's POST with the XSRF
  token. Request bodies of the spawn page and the server API are capped.
- A named server whose start was refused or failed is removed, so refused starts do not use up
  the user's named-server limit.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import stat
from pathlib import Path

import yaml
from jupyterhub.apihandlers import users as users_api
from jupyterhub.handlers import pages
from tornado import web

from aifactory.hub.options import quote_prefix

DEMO_PASSWORDS_FILE = Path("/etc/aifactory/demo-passwords.yaml")
# request bodies of the spawn form and the server API: the options are a handful of short values
MAX_BODY_BYTES = 16 * 1024

# ---------------------------------------------------------------- secret files


class SecretFileError(RuntimeError):
    pass


def read_secret_file(path: str | Path) -> str:
    """The stripped content of a secret file that only its owner may read (0600 or 0400)."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise SecretFileError(f"secret file {path} does not exist") from None
    if info.st_mode & 0o077:
        raise SecretFileError(f"secret file {path} is readable by others "
                              f"(mode {stat.S_IMODE(info.st_mode):04o}); chmod 600 it")
    return path.read_text().strip()


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` created 0600 (never readable by others, not even briefly)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def read_demo_passwords(path: Path = DEMO_PASSWORDS_FILE) -> dict[str, str]:
    """user -> password of the local demo users ({} when the file does not exist)."""
    try:
        raw = yaml.safe_load(read_secret_file(path)) or {}
    except SecretFileError:
        if not path.exists():
            return {}
        raise
    return {str(user): str(password) for user, password in raw.items()}


def ensure_demo_passwords(users, path: Path = DEMO_PASSWORDS_FILE) -> dict[str, str]:
    """Random passwords for demo users that have none yet; existing ones are kept (idempotent).

    The folder is 0700 and the file 0600, owned by whoever runs this (root for the cluster).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    passwords = read_demo_passwords(path) if path.exists() else {}
    missing = [user for user in users if user not in passwords]
    for user in missing:
        passwords[user] = secrets.token_urlsafe(12)
    if missing or not path.exists():
        write_private(path, yaml.safe_dump(passwords, sort_keys=True))
    path.chmod(0o600)
    return passwords


# ---------------------------------------------------------------- the hub's state


STATE_FILES = ("jupyterhub.sqlite", "jupyterhub_cookie_secret", "hub.log", "proxy.pid", "hub.pid",
               "jupyterhub-proxy.pid")


def make_private(state_dir: str | Path) -> None:
    """The hub's state folder 0700, and the hub's files already in it 0600.

    The database holds users' options, token hashes and OAuth codes; the log names users.
    Files created later are private through the hub's umask (077).
    """
    state = Path(state_dir)
    state.chmod(0o700)
    for name in STATE_FILES:
        path = state / name
        if path.is_file() and not path.is_symlink():
            path.chmod(0o600)


# ---------------------------------------------------------------- request handlers


def parse_json_strict(body: bytes):
    """JSON with duplicate keys refused (``{"port": 1, "port": 2}`` is ambiguous, not "the last")."""

    def no_duplicates(pairs):
        keys = [key for key, _ in pairs]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise web.HTTPError(400, f"duplicate key(s) in JSON: {quote_prefix(', '.join(duplicates))}")
        return dict(pairs)

    try:
        return json.loads(body.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError):
        raise web.HTTPError(400, "the request body is not valid JSON") from None


class BodyLimit:
    """Refuse request bodies over ``MAX_BODY_BYTES`` before a handler parses or stores them."""

    max_body_bytes = MAX_BODY_BYTES

    async def prepare(self):
        declared = self.request.headers.get("Content-Length", "0")
        size = max(len(self.request.body or b""), int(declared) if declared.isdigit() else 0)
        if size > self.max_body_bytes:
            raise web.HTTPError(413, f"request body of {size} bytes refused (at most {self.max_body_bytes})")
        return await super().prepare()


class ConfirmingSpawnHandler(BodyLimit, pages.SpawnHandler):
    """A GET with ``?opt-...`` shows the form filled in with those options; it never starts a job.

    JupyterHub starts a server straight from a GET's query options, so any page could start a
    session (2 GPUs for 8 hours on the victim's share) with a link or an image tag. Here the
    query options only preselect the form (the spawner reads ``confirm_options``), and the start
    is the form's POST, which carries the XSRF token.
    """

    confirm_options: dict | None = None

    def _get_user_options(self, query_options):
        self.confirm_options = super()._get_user_options(query_options)
        return {}

    async def _without_new_idle_record(self, handle, user_name, server_name, display_name):
        # JupyterHub creates the named server's record when the page is shown or the form is
        # refused; a record that did not exist before and runs nothing would count against
        # named_server_limit_per_user (a page could fill it with links)
        user = self.find_user(user_name or self.current_user.name)
        existed = user is None or not server_name or server_name in user.orm_spawners
        try:
            return await handle(user_name, server_name, display_name)
        finally:
            spawner = None if existed else user.spawners.get(server_name)
            if spawner is not None and not spawner.active:
                await remove_named_server_record(spawner)

    async def _get(self, user_name, server_name, display_name):
        return await self._without_new_idle_record(super()._get, user_name, server_name, display_name)

    async def _post(self, user_name, server_name, display_name):
        return await self._without_new_idle_record(super()._post, user_name, server_name, display_name)


class LimitedUserServerAPIHandler(BodyLimit, users_api.UserServerAPIHandler):
    """The server API (``POST /hub/api/users/NAME/server[s/SERVER]``) with a capped body."""


def install_routes(page_routes: list, api_routes: list) -> None:
    """Put the handlers above in place of JupyterHub's (idempotent)."""
    for routes, stock, ours in ((page_routes, pages.SpawnHandler, ConfirmingSpawnHandler),
                                (api_routes, users_api.UserServerAPIHandler, LimitedUserServerAPIHandler)):
        routes[:] = [(pattern, ours if handler is stock else handler, *rest)
                     for pattern, handler, *rest in routes]


# ---------------------------------------------------------------- failed named servers


async def remove_named_server_record(spawner, delay: float = 0.0) -> None:
    """Remove the record of a named server that runs nothing (a failed start, a page never confirmed).

    Waits ``delay`` seconds (the progress page may still want the failure message), then
    removes it like ``DELETE .../servers/NAME {"remove": true}`` does, unless it was started again.
    """
    user, name = spawner.user, spawner.name
    await asyncio.sleep(delay)
    for _ in range(100):  # JupyterHub finishes its own stop bookkeeping first
        if not spawner._stop_pending:
            break
        await asyncio.sleep(0.1)
    current = user.spawners.get(name)
    if not name or spawner.active or (current is not None and current is not spawner) \
            or name not in user.orm_spawners:
        return
    spawner.log.info("Removing the record of named server %s: nothing runs on it", spawner._log_name)
    await user._delete_spawner(spawner)
    user.db.delete(spawner.orm_spawner)
    user.spawners.pop(name, None)
    user.db.commit()
