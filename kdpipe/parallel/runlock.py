"""One `kdpipe run` at a time per run directory.

Two runs writing one directory (a job restarted by its scheduler while the first copy still
runs, the same command typed in two terminals) would overwrite each other's config.yaml and
stage files and, worse, write the same training checkpoint: both into the one reused spare
file (distill/checkpoint.py), which then holds tensors of both — and the next resume would
load it. So rank 0 holds an exclusive `flock` on `OUT/.kdpipe.lock` from before it writes
config.yaml until the run returns. The kernel drops the lock when the process dies, however
it dies (SIGKILL included), so a crashed run never blocks the rerun that resumes it; the file
itself stays behind and means nothing without the lock. POSIX only: where `fcntl` is missing
(Windows) runs are not locked.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import TracebackType

from kdpipe.core import ui
from kdpipe.core.errors import ConfigError
from kdpipe.core.runs import LOCK_NAME

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


# Lock descriptors this process holds. A forked child (a DataLoader worker) inherits them, and
# a flock lives as long as any copy: workers that outlived a killed run by a few seconds would
# refuse its rerun. So children close their copies as they start (closing a copy never
# releases the parent's lock).
_held: set[int] = set()


def _close_in_child() -> None:
    for fd in _held:
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class RunLock:
    """`acquire()` raises ConfigError at once when another process holds `out`; `release()`
    (or the end of a `with` block) lets it go."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, warn: bool = True) -> None:
        """Take the lock, or raise ConfigError naming the holder. A directory that cannot be
        locked (read-only, a filesystem without flock) is used unlocked, with a warning unless
        `warn` is off (the CLI's early probe: the run itself reports it)."""
        if fcntl is None or self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            return self._unlocked(e, warn)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 300).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"{self.path.parent} is in use by another kdpipe run (pid {holder})",
                "wait for that run to finish (or stop it), or pick another --out",
            ) from None
        except OSError as e:
            os.close(fd)
            return self._unlocked(e, warn)
        os.ftruncate(fd, 0)
        # "pid on host": on a shared filesystem the holder may be another machine's process
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        _held.add(fd)

    def _unlocked(self, e: OSError, warn: bool) -> None:
        if warn:
            ui.warn(
                f"cannot lock {self.path} ({e.strerror or e}): a second run into this "
                "directory at the same time would not be detected"
            )

    def release(self) -> None:
        if self._fd is not None:
            _held.discard(self._fd)
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
