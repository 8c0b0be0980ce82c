"""This process's place in a torchrun job, read from what torchrun sets in the environment:
the same answer before the process group forms and after it ends, and without torch."""

from __future__ import annotations

import os

from kdpipe.core.errors import ConfigError


def env_int(name: str, default: int) -> int:
    text = os.environ.get(name, str(default))
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={text!r} is not a whole number",
            f"unset {name}, or let torchrun set it",
        ) from None


def active() -> bool:
    return "WORLD_SIZE" in os.environ


def rank() -> int:
    return env_int("RANK", 0)


def local_rank() -> int:
    return env_int("LOCAL_RANK", 0)


def world_size() -> int:
    """Processes training together (1 without torchrun)."""
    return env_int("WORLD_SIZE", 1)


def local_world_size() -> int:
    return env_int("LOCAL_WORLD_SIZE", 1)


def is_main() -> bool:
    """Rank 0, or a process not started by torchrun: the one that writes and reports."""
    return os.environ.get("RANK", "0") == "0"


def several_machines() -> bool:
    """Whether this process belongs to a torchrun job spread over several machines."""
    return active() and os.environ.get("LOCAL_WORLD_SIZE", "1") != os.environ["WORLD_SIZE"]


def first_on_another_machine() -> bool:
    """Whether this torchrun process is the first of a machine other than rank 0's."""
    return several_machines() and os.environ.get("LOCAL_RANK", "0") == "0" and not is_main()


def check_batch(role: str, batch: int, world: int | None = None) -> None:
    """Each process takes batch // world images of a global batch: fewer than one is no split."""
    world = world_size() if world is None else world
    if batch < world:
        raise ConfigError(
            f"the {role} batch size {batch} is smaller than the {world} processes "
            "training together",
            f"--batch-size is the global batch, split between the processes: give at least "
            f"{world} (a multiple of {world} splits it exactly), or start fewer processes",
        )
