"""Every process of a torchrun job must start from the same inputs.

torchrun starts one `kdpipe run` per process, on every machine, each with its own command
line, files and installed kdpipe; nothing in torch checks that they agree. Processes that do
not (a node started with other options, a dataset copy missing files, another weights file
at the same path, another kdpipe version, a CPU that infers in bf16 beside one that cannot)
would average gradients of different models, disagree on which stages to reuse and which
checkpoint to resume, or wait forever in a collective the others never reach. So before
anything is written, each process describes its inputs, and any difference from rank 0's is
one error on every process, naming the first rank that differs and what differs.
"""

from __future__ import annotations

import hashlib
import json
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
SHOWN = 40  # bytes of each value carried for the message (a digest tells longer ones apart)
DIGEST = 8
VERSION_BYTES = 32  # a version string's field; after it the digest of the names compared
HEAD = VERSION_BYTES + DIGEST
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
    # class names, normalization, input size: compared by digest, shown as one
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
    """Raise ConfigError on every process when any process's inputs differ from rank 0's
    (a no-op on one process)."""
    if not distributed.current().active:
        return
    parts = describe(cfg, data)
    names = sorted(parts)
    # First the kdpipe version and the names compared: another version may compare others.
    schema = hashlib.sha256("\n".join(names).encode()).digest()[:DIGEST]
    heads = distributed.gather_records(
        distributed.text_field(__version__, VERSION_BYTES) + schema + distributed.host_field()
    )
    for rank, head in enumerate(heads[1:], start=1):
        if head[:HEAD] != heads[0][:HEAD]:
            theirs = distributed.text_of(head[:VERSION_BYTES])
            ours = distributed.text_of(heads[0][:VERSION_BYTES])
            same = theirs == ours
            raise _found_by(
                rank,
                f"rank {rank} on {distributed.host_of(head[HEAD:])} runs "
                + (
                    f"another build of kdpipe {ours}"
                    if same
                    else f"kdpipe {theirs} and rank 0 kdpipe {ours}"
                ),
                "install the same kdpipe on every machine of the job",
            )
    records = distributed.gather_records(b"".join(_field(parts[n]) for n in names))
    width = DIGEST + SHOWN
    split = [[rec[i * width : (i + 1) * width] for i in range(len(names))] for rec in records]
    differing = [
        (rank, [n for n, a, b in zip(names, fields, split[0], strict=True) if a != b])
        for rank, fields in enumerate(split)
    ]
    differing = [(r, diff) for r, diff in differing if diff]
    if not differing:
        return
    rank, diff = differing[0]
    if "data" in diff and "data details" in diff:  # the sizes say it; a digest adds nothing
        diff.remove("data details")
    shown = "; ".join(
        f"{n}: {_shown(split[rank][names.index(n)])} on rank {rank}, "
        f"{_shown(split[0][names.index(n)])} on rank 0"
        for n in diff[:SHOWN_DIFFERENCES]
    )
    more = len(diff) - SHOWN_DIFFERENCES
    others = len(differing) - 1
    host = distributed.host_of(heads[rank][HEAD:])
    hint = (
        "start every process with the same command and give every machine the same files "
        "(dataset, weights and model files)"
    )
    if "training precision" in diff:
        hint += "; where their hardware differs, set --teacher-precision and --amp/--no-amp"
    raise _found_by(
        rank,
        f"the processes of this run were started with different inputs: rank {rank} on "
        f"{host} differs from rank 0 in {shown}"
        + (f" and {more} more" if more > 0 else "")
        + (f" ({others} other rank{'s' if others > 1 else ''} differ too)" if others else ""),
        hint,
    )


def _found_by(rank: int, message: str, hint: str) -> ConfigError:
    """The job's verdict on rank `rank`'s inputs, the same on every rank (cli/errors.py: rank 0
    reports it, and rank `rank` too when it runs on another machine)."""
    error = ConfigError(message, hint)
    error.agreed_from = rank
    return error


def _options(section: BaseModel, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, JSON value) of every option of the config's sections: the names come
    from the schema (a --set or --terms dict is one value), the same on every process."""
    dumped = section.model_dump(mode="json")
    out: list[tuple[str, Any]] = []
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            out += _options(value, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", dumped[name]))
    return out


def _field(value: str) -> bytes:
    """A value's digest (tells any two apart) and its first SHOWN bytes (for the message)."""
    return hashlib.sha256(value.encode()).digest()[:DIGEST] + distributed.text_field(value, SHOWN)


def _shown(field: bytes) -> str:
    text = distributed.text_of(field[DIGEST:])
    return text if len(text.encode()) < SHOWN else f"{text[: SHOWN - 10]}... ({field[:4].hex()})"
