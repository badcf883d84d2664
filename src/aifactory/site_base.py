"""What every part of the site-file validation shares: the error and the checked reads.

``site`` (the core sections) and ``site_sections`` (the feature sections) both build on
these; each error names the offending key (``partitions.gpu.max_hours``).
"""

from __future__ import annotations

import re

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
USERNAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


class SiteError(ValueError):
    """The site file is invalid; the message names the key."""


def _get(mapping: dict, key: str, where: str, kind: type | tuple, default=...):
    if not isinstance(mapping, dict):
        raise SiteError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    if key not in mapping:
        if default is ...:
            raise SiteError(f"{where}.{key}: missing")
        return default
    value = mapping[key]
    # bool is an int subclass: refuse `true` where a number is meant
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SiteError(f"{where}.{key}: expected {names}, got {value!r}")
    return value


def _positive(value: int, where: str) -> int:
    if value < 0:
        raise SiteError(f"{where}: must not be negative, got {value}")
    return value


def _name(value: str, where: str, pattern: re.Pattern = NAME_RE) -> str:
    if not pattern.match(value):
        raise SiteError(f"{where}: {value!r} is not a valid name (lower-case letters, digits, - and _)")
    return value


def _check_unknown(mapping: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise SiteError(f"{where}: unknown key(s) {', '.join(unknown)}")
