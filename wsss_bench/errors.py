"""Errors a user can fix: the CLI prints them as one line on stderr and exits with status 2."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input (option, plugin name, data folder). The message names the problem and the fix."""


class PluginError(UsageError):
    """A plugin cannot be registered (for example a duplicate name)."""
