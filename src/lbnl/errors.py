"""Exceptions that carry a message meant for the user, not a traceback."""

from __future__ import annotations


class LBNLError(Exception):
    """Base class: the CLI and the server print these as plain messages."""


class InvalidInputError(LBNLError, ValueError):
    """A caller passed a query, documents or options that cannot be scored."""


class CheckpointError(LBNLError):
    """A checkpoint is missing, unreadable or lacks a piece the LBNL model needs."""
