"""Modules put first on a session's ``PYTHONPATH`` by ``aifactory-singleuser`` (see ``rfc3987_syntax``).

This folder is on the path, not this package: each module here stands in for a third-party
module of the same name and loads the real one when it is first used.
"""
