"""Errors a user can fix: the CLI prints them as one line on stderr and exits with status 2."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input (option, plugin name, data folder). The message names the problem and the fix."""


class PluginError(UsageError):
    """A plugin cannot be registered (for example a duplicate name)."""


class PluginOutputError(UsageError):
    """A plugin's output broke its contract (NaN CAM, wrong shape, non-bool mask ...) or the
    plugin raised; the message names the plugin, its distribution and what was wrong."""


class RunIncomplete(Exception):
    """Some units failed: the others finished and were stored, the leaderboard was updated
    with the methods that are whole. ``lines`` says which units failed and why, one each."""

    def __init__(self, lines: list[str], board: dict | None = None) -> None:
        self.lines = lines
        self.board = board  # the leaderboard as published (the whole methods only)
        super().__init__(f"{len(lines)} unit(s) failed")
