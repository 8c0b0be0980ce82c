"""The run directory: where each stage writes, how it knows it is already done, atomic writes.

Every file goes to a temporary name in the same folder and is renamed into place, so a crash
never leaves a half-written artifact that looks whole. Each stage writes `stage.json` with a
fingerprint of its inputs; a later run skips the stage when the fingerprint still matches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kdpipe import __version__
from kdpipe.core import ui
from kdpipe.core.errors import ConfigError
from kdpipe.core.structured import SETTINGS_BYTES, ParseError, is_number, parse, read_text

STAGES = ("teacher", "distill", "export", "profile", "report")

LOCK_NAME = ".kdpipe.lock"  # held by a `kdpipe run` writing here (parallel/runlock.py)


_writer = True


def set_writer(writes: bool) -> None:
    """In a distributed run only rank 0 writes files; the other ranks' writes are dropped."""
    global _writer
    _writer = writes


def _umask() -> int:
    mask = os.umask(0o022)  # reading it means setting it; put it back at once
    os.umask(mask)
    return mask


# Files get the mode a plain open() gives them (0o666 less the umask). mkstemp's 0o600 made
# every artifact readable by its owner alone: a report served by a web server, a run
# directory shared with a team or read by a CI job of another user could not be read.
FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path: Path, every_rank: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds
    (and only on the process that writes: rank 0 of a distributed run, or any with
    `every_rank`). A write the disk refuses (full, over quota) names `path` in its OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # a folder that takes no files (/proc, read-only): name the file
        e.filename = str(path)
        raise
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with naming(path, tmp_path):  # the user knows the file, not its temporary name
            yield tmp_path
            if _writer or every_rank:
                os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def naming(path: Path, *stand_ins: Path) -> Iterator[None]:
    """An OSError in the block that names no file (onnx and onnxruntime write through their own
    code, a full disk's write error carries no name), or names one of `stand_ins` (temporary
    files), names `path`, the file being made."""
    try:
        yield
    except OSError as e:
        if e.filename is None or e.filename in {str(p) for p in stand_ins}:
            e.filename = str(path)
            if e.filename2 == str(path):  # a rename onto `path` (a folder of that name)
                e.filename2 = None
        raise


def torch_save_into(obj: Any, f: Any) -> None:
    """torch.save into an open file. A write the disk refuses (full, over quota) comes out as
    its OSError: torch reports it as a RuntimeError ("unexpected pos ...") whose context is
    the OSError (and, given a path instead of a file, without even that)."""
    import torch

    try:
        torch.save(obj, f)
    except RuntimeError as e:
        if isinstance(e.__context__, OSError):
            raise e.__context__ from None
        raise


def save_torch(obj: Any, path: Path) -> None:
    """torch.save to `path`, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch_save_into(obj, f)


class DamagedFile(ValueError):
    """A PyTorch file whose bytes changed after torch wrote them (`record`: the first one)."""

    def __init__(self, path: Path, record: str) -> None:
        super().__init__(f"{path} is damaged: its record {record} fails its CRC-32 check")
        self.record = record


def damaged_record(path: Path) -> str | None:
    """The first record of a PyTorch (zip) file whose bytes do not match the CRC-32 torch.save
    stored for it, or None. torch.load never checks those checksums: a flipped bit inside a
    tensor loads as a wrong weight. Files without checksums (torch's legacy format, or saved
    with compute_crc32 off) have nothing to check and pass; 35 ms per 100 MB here."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        return None  # not a zip file: torch.load says what it is
    with archive:
        infos = archive.infolist()
        if any(i.compress_type != zipfile.ZIP_STORED or i.flag_bits & 1 for i in infos):
            return None  # compressed or encrypted: not torch's writing (torch.load refuses it)
        if not any(i.CRC for i in infos if i.file_size):
            return None
        return archive.testzip()  # reads every record; a bad header is named as well


def load_torch(path: Path) -> Any:
    """torch.load(weights_only=True) of a file whose checksums hold (DamagedFile if not)."""
    import torch

    record = damaged_record(path)
    if record is not None:
        raise DamagedFile(path, record)
    return torch.load(path, map_location="cpu", weights_only=True)


def write_text(path: Path, text: str, every_rank: bool = False) -> None:
    with atomic_path(path, every_rank) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: Any, every_rank: bool = False) -> None:
    """`data` as JSON, atomically (on rank 0 alone unless `every_rank`: see atomic_path)."""
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n"
    write_text(path, text, every_rank)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def read_json(path: Path) -> Any:
    """A JSON file's values; a file that is not JSON (or nested too deeply) is a ValueError."""
    return parse(read_text(path), "json")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able inputs (config sections, upstream hashes, version)."""
    blob = json.dumps([__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def forced_stages(force: Iterable[str]) -> set[str]:
    """The stages `--force` redoes: those named and every stage after the first of them."""
    force = set(force)
    unknown = force - set(STAGES) - {"all"}
    if unknown:
        raise ConfigError(
            f"unknown stage '{sorted(unknown)[0]}' for --force",
            f"use one of: {', '.join(STAGES)}, all",
        )
    if "all" in force:
        return set(STAGES)
    first = min((STAGES.index(s) for s in force), default=len(STAGES))
    return set(STAGES[first:])  # redoing a stage invalidates everything downstream


def check_until(until: str) -> None:
    if until not in STAGES:
        raise ConfigError(
            f"unknown stage '{until}' for --until", f"use one of: {', '.join(STAGES)}"
        )


def refuse_foreign_dir(path: Path, forced: bool) -> None:
    """A non-empty directory that is not a kdpipe run is someone else's: never write into it
    unless told to (--force)."""
    if forced or not path.is_dir() or (path / "config.yaml").is_file():
        return
    # A run killed before it wrote config.yaml leaves only its lock file (runlock.py).
    if any(p.name != LOCK_NAME for p in path.iterdir()):
        raise ConfigError(
            f"{path} is a non-empty directory that is not a kdpipe run",
            "pick a new --out, or pass --force all to write into it anyway",
        )


def ensure_writable_dir(path: Path) -> None:
    """Create `path` if needed and prove a file can be written there, or raise ConfigError."""
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"output directory {path} is a file, not a folder", "pass --out with a folder"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe.", delete=True):
            pass
    except OSError as e:
        raise ConfigError(
            f"cannot write to output directory {path}: {e.strerror or e}",
            "pass --out with a directory you can write to",
        ) from None


class RunDir:
    """Paths of one run and the bookkeeping of which stages are done."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def stage_record(self, stage: str) -> dict[str, Any] | None:
        path = self.stage_dir(stage) / "stage.json"
        if not path.is_file():
            return None
        try:
            record = read_json(path)
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def is_done(self, stage: str, fp: str) -> bool:
        """The stage finished with these inputs and all its outputs are still on disk as the
        stage wrote them: of the same size (a file cut short by a full disk, a copy or a sync
        that stopped half-way) and the same SHA-256 (bytes changed in place: a bad disk, an
        editor). Any difference runs the stage again instead of failing, or shipping, later."""
        record = self.stage_record(stage)
        if not record or record.get("fingerprint") != fp:
            return False
        sizes, digests = (_mapping(record.get(k)) for k in ("sizes", "sha256"))
        for name in record.get("outputs", []):
            path = self.stage_dir(stage) / name
            if not path.exists():
                return False
            if not path.is_file():
                continue
            size = path.stat().st_size
            if name in sizes and size != sizes[name]:
                change = f"is {size} bytes, not the {sizes[name]} the stage wrote"
            elif name in digests and file_sha256(path) != digests[name]:
                change = "changed since the stage wrote it (its SHA-256 differs)"
            else:
                continue
            ui.warn(f"{stage}: {path} {change}; running the stage again")
            return False
        return True

    def mark_done(self, stage: str, fp: str, outputs: list[str], seconds: float) -> None:
        folder = self.stage_dir(stage)
        files = [n for n in outputs if _writer and (folder / n).is_file()]  # rank 0 hashes
        write_json(
            folder / "stage.json",
            {
                "stage": stage,
                "fingerprint": fp,
                "outputs": outputs,
                "sizes": {n: (folder / n).stat().st_size for n in files},
                "sha256": {n: file_sha256(folder / n) for n in files},
                "seconds": round(seconds, 3),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "kdpipe_version": __version__,
            },
        )


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def load_samples(run_dir: Path) -> dict[str, list[float]]:
    """Raw per-call latencies the profiler kept (profile/samples.json), or {} if absent/corrupt."""
    path = run_dir / "profile" / "samples.json"
    try:
        data = read_json(path) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {  # non-empty lists of numbers only: anything else would reach numpy
        k: v for k, v in data.items() if isinstance(v, list) and v and all(map(is_number, v))
    }


def load_run_config(run_dir: Path) -> dict:
    """The resolved config a run wrote, as a dict (CLI overrides go on top)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"{run_dir} is not a kdpipe run directory (no config.yaml)",
            "pass the --out of a kdpipe run",
        )
    try:
        data = parse(read_text(path, SETTINGS_BYTES), "yaml") or {}
    except (OSError, ParseError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{path} is unreadable ({type(e).__name__})", "re-run kdpipe run"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds no run config", "re-run kdpipe run")
    data["out"] = str(run_dir)
    return data
