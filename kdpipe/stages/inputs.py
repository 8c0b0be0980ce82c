"""Every process of a torchrun job must start from the same inputs (command line, files,
kdpipe), or it averages gradients of other models or waits forever in a collective. Before
anything is written each describes its inputs; a difference from rank 0's is one error on every
process, naming the first rank that differs and what differs.
"""

from __future__ import annotations

import hashlib
import json
import socket
from typing import Any

from pydantic import BaseModel

from kdpipe import __version__, models
from kdpipe.core.config import RunConfig
from kdpipe.core.errors import ConfigError
from kdpipe.core.runs import file_sha256
from kdpipe.data import DataSplits
from kdpipe.distill.stepper import training_numerics
from kdpipe.models.custom import sources
from kdpipe.parallel import distributed

# Options that change no trained result and may fit one machine and not another: loader
# workers; export and profile run on rank 0 alone, after training.
PER_MACHINE = ("data.workers", "export.", "profile.")
SHOWN = 40  # characters of a value shown in the message (a digest tells longer ones apart)
SHOWN_DIFFERENCES = 3


def describe(cfg: RunConfig, data: DataSplits) -> dict[str, str]:
    """This process's inputs by name: the same names on every process of one kdpipe version."""
    parts = {
        key: json.dumps(value, sort_keys=True)
        for key, value in _options(cfg)
        if not key.startswith(PER_MACHINE)
    }
    info = data.info
    sizes = "/".join(str(info.sizes.get(s, 0)) for s in ("train", "val", "test"))
    parts["data"] = f"{info.num_classes} classes, train/val/test {sizes}"
    # class names, normalization, input size: compared whole, shown cut
    parts["data details"] = json.dumps(info.to_dict(), sort_keys=True)
    parts["training precision"] = json.dumps(training_numerics(cfg.runtime, with_teacher=True))
    for role, section in (("teacher", cfg.teacher), ("student", cfg.student)):
        weights = section.weights
        parts[f"{role} weights file"] = (
            "sha256 " + file_sha256(models.weights_file(section.arch, weights))[:16]
            if weights
            else "none"
        )
    d = cfg.distill
    files = sources(cfg.teacher.arch, cfg.student.arch, *d.assistants, *d.peers)
    parts["model files"] = " ".join(files) or "none"  # path/to/file.py:Name@sha256 each
    return parts


def check_same_inputs(cfg: RunConfig, data: DataSplits) -> None:
    """Raise ConfigError on every process when any process's inputs differ from rank 0's."""
    if not distributed.current().active:
        return
    mine = {"version": __version__, "host": socket.gethostname(), "inputs": describe(cfg, data)}
    everyone = distributed.gather_objects(mine)
    ours = everyone[0]
    # The version and the names compared come first: another version may compare others.
    for rank, theirs in enumerate(everyone):
        if (theirs["version"], theirs["inputs"].keys()) != (ours["version"], ours["inputs"].keys()):
            build = (
                f"another build of kdpipe {ours['version']}"
                if theirs["version"] == ours["version"]
                else f"kdpipe {theirs['version']} and rank 0 kdpipe {ours['version']}"
            )
            raise _found_by(
                rank,
                f"rank {rank} on {theirs['host']} runs {build}",
                "install the same kdpipe on every machine of the job",
            )
    differing = [
        (rank, diff)
        for rank, theirs in enumerate(everyone)
        if (diff := [n for n in sorted(ours["inputs"]) if theirs["inputs"][n] != ours["inputs"][n]])
    ]
    if differing:
        raise _difference(everyone, *differing[0], others=len(differing) - 1)


def _difference(everyone: list[dict], rank: int, diff: list[str], others: int) -> ConfigError:
    if "data" in diff and "data details" in diff:  # the sizes say it; the details add nothing
        diff.remove("data details")
    theirs, ours = everyone[rank]["inputs"], everyone[0]["inputs"]
    shown = "; ".join(
        f"{n}: {_shown(theirs[n])} on rank {rank}, {_shown(ours[n])} on rank 0"
        for n in diff[:SHOWN_DIFFERENCES]
    )
    more = len(diff) - SHOWN_DIFFERENCES
    hint = (
        "start every process with the same command and give every machine the same files "
        "(dataset, weights and model files)"
    )
    if "training precision" in diff:
        hint += "; where their hardware differs, set --teacher-precision and --amp/--no-amp"
    return _found_by(
        rank,
        f"the processes of this run were started with different inputs: rank {rank} on "
        f"{everyone[rank]['host']} differs from rank 0 in {shown}"
        + (f" and {more} more" if more > 0 else "")
        + (f" ({others} other rank{'s' if others > 1 else ''} differ too)" if others else ""),
        hint,
    )


def _found_by(rank: int, message: str, hint: str) -> ConfigError:
    """The verdict on rank `rank`'s inputs (said by rank 0, and by `rank` on its machine)."""
    error = ConfigError(message, hint)
    error.agreed_from = rank
    return error


def _options(section: BaseModel, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, JSON value) of every option (a dict is one value)."""
    dumped = section.model_dump(mode="json")
    out: list[tuple[str, Any]] = []
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            out += _options(value, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", dumped[name]))
    return out


def _shown(value: str) -> str:
    """A value as the message shows it: cut when long, with a digest that tells it apart."""
    if len(value) < SHOWN:
        return value
    return f"{value[: SHOWN - 10]}... ({hashlib.sha256(value.encode()).hexdigest()[:8]})"
