"""User-facing errors: the CLI prints their message on one line, never a stack trace."""

from __future__ import annotations


class RsrtError(Exception):
    """An error the user can act on; the message names the item and what is wrong."""

    exit_code = 1


class ConfigError(RsrtError):
    """Bad flags, environment or files given by the user."""

    exit_code = 2


class ClusterError(RsrtError):
    """The cluster is unreachable, refuses our credentials, or lacks a needed plugin."""


class NodeError(RsrtError):
    """The local node could not be provisioned, started or stopped."""
