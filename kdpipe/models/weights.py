"""Safe weight files: PyTorch files always with `weights_only=True`, safetensors files (the
Hugging Face hub's format, tensors only by design) through safetensors; checkpoint dicts
unwrapped, mismatches named."""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from kdpipe.core.errors import ModelError, first_line
from kdpipe.core.runs import DamagedFile, load_torch

_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "student", "net")


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state_dict (or a checkpoint dict holding one) without executing any pickled code."""
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist", "check the path")
    if _is_safetensors(path):
        return _unwrap(_load_safetensors(path), path)
    try:
        obj = load_torch(path)
    except DamagedFile as e:
        raise ModelError(
            f"weights file {path} is damaged: its record {e.record} fails its CRC-32 check",
            "copy or fetch the file again (it changed after torch.save wrote it)",
        ) from None
    except pickle.UnpicklingError as e:
        # The safe unpickler names the code a file wants to import as a "global"; any other
        # complaint means the bytes are simply not a pickle torch can read.
        culprit = [ln.strip() for ln in str(e).splitlines() if "global" in ln.lower()]
        if not culprit:
            raise _unreadable(path, e) from None
        raise ModelError(
            f"refused to load {path}: it holds objects other than tensors ({culprit[0][:160]})",
            "save weights with torch.save(model.state_dict(), path); kdpipe never unpickles code",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise _unreadable(path, e) from None
    return _unwrap(obj, path)


def _is_safetensors(path: Path) -> bool:
    """By name, or by the format's opening: an 8-byte little-endian header length, then '{'."""
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    return (
        len(head) == 9
        and head[8:] == b"{"
        and 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size
    )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise _unreadable(path, e, "safetensors") from None


def _unreadable(path: Path, e: Exception, kind: str = "PyTorch") -> ModelError:
    first = first_line(e, 160)
    return ModelError(
        f"weights file {path} is not a readable {kind} file ({first})",
        "pass a file written by safetensors.torch.save_file(state_dict, path) (it may be cut "
        "short: fetch it again)"
        if kind == "safetensors"
        else "pass a file written by torch.save(model.state_dict(), path)",
    )


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in _NESTED_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(k, str) for k in inner):
                obj = inner
                break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(
            f"weights file {path} holds no state_dict",
            "save it with torch.save(model.state_dict(), path)",
        )
    # Checkpoints saved from DataParallel/DDP prefix every key with "module.".
    state = OrderedDict(
        (k.removeprefix("module."), v) for k, v in obj.items() if isinstance(v, torch.Tensor)
    )
    # state_dict()'s per-module versions: some modules read them when loading (MNASNet
    # refuses a state without them), so they travel with the unwrapped keys.
    meta = getattr(obj, "_metadata", None)
    if isinstance(meta, dict):
        wrapped = "module" in meta  # the wrapper's own "" entry gives way to its module's
        state._metadata = {  # type: ignore[attr-defined]
            ("" if k == "module" else k.removeprefix("module.")): v
            for k, v in meta.items()
            if not (wrapped and k == "")
        }
    return state


def load_into(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False
) -> None:
    """Load `state` strictly; on mismatch name the missing, unexpected and mis-shaped keys.
    `assign`: the model's tensors become the state's (a model built on the meta device), each
    cast to the dtype the model declares (an fp16 file still gives an fp32 model)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys ({', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys ({', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"shape mismatch in {len(shapes)} ({'; '.join(shapes[:2])})")
        raise ModelError(
            f"weights in {source} do not fit {type(model).__name__}: {'; '.join(parts)}",
            "check the architecture name and the number of classes the weights were trained for",
        )
    if assign:  # the model's tensors become these: cast to the dtypes the model declares
        cast = OrderedDict((k, v.to(own[k].dtype)) for k, v in state.items())
        cast._metadata = getattr(state, "_metadata", None)  # type: ignore[attr-defined]
        state = cast
    if getattr(state, "_metadata", None) is None:
        # A file without module versions (a plain dict, or written by other tools): its keys
        # and shapes match this model's layout exactly, so take this model's versions.
        state = OrderedDict(state)
        state._metadata = getattr(own, "_metadata", {})  # type: ignore[attr-defined]
    try:
        model.load_state_dict(state, strict=True, assign=assign)
    except (RuntimeError, ValueError) as e:
        first = first_line(e, 160)
        raise ModelError(
            f"weights in {source} do not load into {type(model).__name__}: {first}",
            "save them with torch.save(model.state_dict(), path) from the same architecture",
        ) from None
