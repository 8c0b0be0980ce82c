"""The DataLoader kdpipe reads with: its worker processes leave a stop to the training
process (stopping.loader_worker_init), from the moment they exist."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch.utils.data import DataLoader

from kdpipe.parallel import stopping


@contextmanager
def stops_held() -> Iterator[None]:
    """The stop signals (stopping.SIGNALS) held back from the calling thread (a signal
    meanwhile waits, it is not lost). A process forked within inherits the hold, and a DataLoader worker lifts it
    in `loader_worker_init`, once its own handlers are in place: else a scheduler's SIGTERM
    landing between the fork and that call ended the worker (by default, then by torch's
    worker handler) and training with it. The training process takes its signals as the
    block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no fork, no masks
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, stopping.SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


class WorkerLoader(DataLoader):
    """A DataLoader whose workers start with kdpipe's signal handling (see `stops_held`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("worker_init_fn", stopping.loader_worker_init)
        super().__init__(*args, **kwargs)

    def __iter__(self) -> Any:
        if self.num_workers == 0:
            return super().__iter__()
        with stops_held():  # the workers fork here
            return super().__iter__()
