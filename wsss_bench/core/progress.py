"""Progress bars and one-line stage summaries on stderr; silent in quiet mode."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Reporter:
    """Shows a rich progress bar per task and prints a summary line per finished stage."""

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        if not self.console.is_terminal and console is None:  # a log file: no wrapping
            self.console = Console(stderr=True, width=200)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar of ``total`` steps; yields ``advance(n)`` (no bar outside a terminal)."""
        if self.quiet or not self.console.is_terminal:
            yield lambda n=1: None
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            task_id = progress.add_task(description, total=total)
            yield lambda n=1: progress.advance(task_id, n)

    def summary(self, line: str) -> None:
        if not self.quiet:
            self.console.print(line, highlight=False)
