"""Terminal output: one stderr console, progress bars with rate and ETA, silenced by --quiet."""

from __future__ import annotations

import socket

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from kdpipe.core import torchrun

console = Console(stderr=True, highlight=False)
_quiet = False
_warnings = True  # False on torchrun ranks other than 0 (see silence_rank)
_compared = False  # the ranks of a torchrun job found their inputs alike (stages/inputs.py)


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def silence_rank(compared: bool = False) -> None:
    """A torchrun rank other than 0: rank 0 says it all. Every rank of a machine reads the
    same data and files, so each warning (a skipped image, a damaged output) came once per
    process. On several machines, until the ranks have compared their inputs (`compared`),
    the first process of each other machine keeps its warnings, named by rank and host: its
    files may differ (an image that does not decode in that machine's copy)."""
    global _quiet, _warnings, _compared
    _quiet, _compared = True, compared
    _warnings = speaks_for_its_machine()


def speaks_for_its_machine() -> bool:
    """Whether this process reports its own warnings and errors of the options and files:
    the first of a machine other than rank 0's, until the ranks have compared their inputs
    (its files may differ from rank 0's); after that rank 0 speaks for every rank."""
    return not _compared and torchrun.first_on_another_machine()


def rank_prefix() -> str:
    """`rank N on HOST: ` for a process of a torchrun job other than rank 0 (whose lines are
    the job's own), else nothing."""
    if not torchrun.active() or torchrun.is_main():
        return ""
    return f"rank {torchrun.rank()} on {socket.gethostname()}: "


def info(message: str) -> None:
    """A status line on stderr, unless --quiet. Messages are plain text: brackets in them
    (`kdpipe[gpu]`, a path, a user's file name) are printed, not read as rich markup."""
    if not _quiet:
        console.print(escape(message))


def warn(message: str) -> None:
    """A warning is printed even with --quiet: it may change how results are read."""
    if _warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(rank_prefix() + message)}")


def error(message: str, hint: str = "") -> None:
    """The one-line error (and its hint) of a failed command, on stderr."""
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    if hint:
        console.print(f"hint: {escape(hint)}", soft_wrap=True)


def progress(auto_refresh: bool = True) -> Progress:
    """A progress display: task text, bar, done/total, images/s (field `rate`), ETA.
    `auto_refresh=False` draws only when the caller asks (`update(..., refresh=True)`): the
    profiler's choice, since rich's 10 Hz drawing thread takes the GIL in the middle of timed
    calls (+3 % on a 0.5 ms model's p99, measured)."""
    return Progress(
        # Not markup: a description names models and files, which may hold brackets.
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}", markup=False),
        TextColumn("{task.fields[stats]}", markup=False),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=_quiet,
        transient=False,
        auto_refresh=auto_refresh,
    )
