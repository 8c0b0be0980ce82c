"""Terminal output: one stderr console, progress bars with rate and ETA, silenced by --quiet."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)
_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def info(message: str) -> None:
    """A status line on stderr, unless --quiet."""
    if not _quiet:
        console.print(message)


def warn(message: str) -> None:
    """A warning is printed even with --quiet: it may change how results are read."""
    console.print(f"[yellow]warning:[/yellow] {message}")


def progress() -> Progress:
    """A progress display: task text, bar, done/total, images/s (field `rate`), ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=_quiet,
        transient=False,
    )
