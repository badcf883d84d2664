"""Workshops: an instructor books the cluster for a room of participants.

``plan`` validates a request (pure), ``store`` keeps the record, ``privileged`` is the sudo
helper for reservations and walk-in accounts, ``manager`` orchestrates, ``service`` serves
the pages and the JSON API, ``client`` is the ``aifactory workshop`` command.
"""
