"""`kdpipe profile TARGET...` outside a run: time any mix of models side by side.

A target is an ONNX file (`model.onnx`), a TensorRT plan (`model.plan`), a bundle folder
(every model in its bundle.json), or a PyTorch model as `ARCH:WEIGHTS` (`resnet18:s.pt`).
All are timed interleaved on the same random input with the run's methodology; memory is
measured per backend in a fresh process. A run directory among other targets stands for its
models (`run_dir_targets`); alone, it is re-profiled into its own report by `kdpipe.api`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from kdpipe import models
from kdpipe.core import ui
from kdpipe.core.config import ProfileConfig, file_model, model_label
from kdpipe.core.errors import ConfigError, ExportError, first_line
from kdpipe.core.runs import load_run_config
from kdpipe.predict import load_bundle
from kdpipe.profile import environment, memory
from kdpipe.profile.environment import check_input_fits
from kdpipe.runtimes import tensorrt
from kdpipe.runtimes.backends import OrtPredict, Runner
from kdpipe.runtimes.registry import Model, runners_of
from kdpipe.stages.export import TEACHER_ONNX
from kdpipe.stages.profile import settings_record, time_runners


def _num_classes(state: dict[str, torch.Tensor]) -> int:
    """Outputs of the last 2-D weight: the classifier head of a torchvision model."""
    heads = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    if not heads:
        raise ConfigError(
            "cannot tell the number of classes from these weights", "pass an ONNX file instead"
        )
    return int(heads[-1].shape[0])


@dataclass(frozen=True)
class Declared:
    """What a target says of its input: dims after the batch (None where symbolic) and the
    batch sizes it takes, lowest and highest (None where free): (1, 1) for a file that fixes
    batch 1, a TensorRT engine's optimization-profile range."""

    dims: tuple[int | None, ...]
    batches: tuple[int, int] | None = None

    def takes(self, batch: int) -> bool:
        return self.batches is None or self.batches[0] <= batch <= self.batches[1]

    def says(self) -> str:
        lo, hi = self.batches or (1, 0)
        return f"batch {lo} only" if lo == hi else f"batch {lo} to {hi}"


DEFAULT_CHW = (3, 224, 224)


QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"}
INTEGER_OPS = {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}


def onnx_precision(model: Path | onnx.GraphProto) -> str:
    """int8 for Q/DQ or integer-op graphs, fp16 where the weights are half, else fp32: read
    from the graph, since a user's file name need not say (`model_quant.onnx`)."""
    graph = model if isinstance(model, onnx.GraphProto) else _graph(model)
    ops = {n.op_type for n in graph.node}
    if ops & (QUANTIZED_OPS | INTEGER_OPS):
        return "int8"
    half = onnx.TensorProto.FLOAT16
    if any(t.data_type == half for t in graph.initializer) or any(
        i.type.tensor_type.elem_type == half for i in graph.input
    ):
        return "fp16"
    return "fp32"


def _graph(path: Path) -> onnx.GraphProto:
    return onnx.load(str(path), load_external_data=False).graph


def onnx_bytes(path: Path, graph: onnx.GraphProto) -> int:
    """The model's size on disk: the file and every external-data file its tensors name
    (models over 2 GB, or saved with `save_as_external_data`, keep their weights beside it)."""
    files = {
        entry.value
        for t in graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for entry in t.external_data
        if entry.key == "location"
    }
    beside = [path.parent / f for f in sorted(files)]
    return path.stat().st_size + sum(f.stat().st_size for f in beside if f.is_file())


def _onnx_runners(
    paths: list[Path], name: str, threads: int, alone: bool = False
) -> tuple[list[Runner], Declared]:
    """The runners of one model's ONNX files (one per precision: a bundle's) on each backend
    here, and what the first file's input declares."""
    model = Model(name)
    for path in paths:
        try:
            onnx.checker.check_model(str(path))
        except (onnx.checker.ValidationError, OSError, ValueError) as e:
            first = first_line(e)
            raise ExportError(
                f"{path} is not a valid ONNX model ({first})", "re-export it"
            ) from None
        graph = _graph(path)
        precision = onnx_precision(graph)
        model.onnx[precision], model.onnx_bytes[precision] = path, onnx_bytes(path, graph)
    out, _ = runners_of([model], threads, alone)
    ort_cpu = out[0].predict
    assert isinstance(ort_cpu, OrtPredict)  # CPUExecutionProvider is in every build
    batch = ort_cpu.input.batch
    return out, Declared(ort_cpu.input.dims, None if batch is None else (batch, batch))


def runners_for(
    target: str, threads: int, alone: bool = False, name: str | None = None
) -> tuple[list[Runner], Declared | None]:
    """Runners for one CLI target, and what it declares of its input, if anything. `name`
    replaces the model name taken from the file or architecture."""
    path = Path(target)
    if path.is_dir() and (path / "bundle.json").is_file():
        _, bundle = load_bundle(path)  # a corrupt bundle.json is one clear line
        files = [path / entry["file"] for entry in bundle["models"].values()]
        runners, _ = _onnx_runners(files, name or path.name or "bundle", threads, alone)
        return runners, Declared(tuple(bundle["input"]["shape"][1:]))
    if path.suffix == ".onnx":
        if not path.is_file():
            raise ConfigError(f"ONNX file {path} does not exist", "check the path")
        return _onnx_runners([path], name or path.stem.split(".")[0], threads, alone)
    if path.suffix == ".plan":
        return _engine_runners(path, name or path.stem, threads)
    if file_model(target):
        raise ConfigError(f"cannot profile '{target}' without weights", f"pass {target}:WEIGHTS.pt")
    # ARCH:WEIGHTS, where ARCH may itself be path/to/file.py:Name
    arch, sep, weights = target.rpartition(":")
    if sep and arch and weights:
        k = _num_classes(models.load_state_dict_file(Path(weights)))
        net = models.create(arch, k, weights).eval()
        model = Model(name or model_label(arch), net, arch, k, Path(weights))
        return runners_of([model], threads, alone)[0], None
    raise ConfigError(
        f"cannot profile '{target}'",
        "pass a run directory, a bundle folder, a .onnx or .plan file, or ARCH:WEIGHTS.pt "
        "(ARCH: a torchvision name or path/to/file.py:Name)",
    )


def run_dir_targets(run_dir: Path) -> list[tuple[str, str]]:
    """A run directory among other targets stands for its models, named RUN/teacher and
    RUN/student: the exported bundle, the teacher's ONNX file, and both weight files."""
    cfg = load_run_config(run_dir)
    try:
        archs = {role: str(cfg[role]["arch"]) for role in ("teacher", "student")}
    except (KeyError, TypeError) as e:
        raise ConfigError(
            f"{run_dir}/config.yaml names no teacher or student arch ({type(e).__name__})",
            "re-run kdpipe run",
        ) from None
    label, export = run_dir.resolve().name, run_dir / "export"
    out = []
    if (export / "bundle.json").is_file():
        out.append((str(export), f"{label}/student"))
    if (export / TEACHER_ONNX).is_file():
        out.append((str(export / TEACHER_ONNX), f"{label}/teacher"))
    for role, weights in (
        ("teacher", run_dir / "teacher" / "model.pt"),
        ("student", run_dir / "distill" / "student.pt"),
    ):
        if weights.is_file():
            out.append((f"{archs[role]}:{weights}", f"{label}/{role}"))
    if not out:
        raise ConfigError(
            f"{run_dir} holds no models yet", f"finish it: kdpipe run --out {run_dir}"
        )
    return out


def _shape(declared: dict[str, Declared], input_size: list[int] | None) -> list[int]:
    """The input after the batch: --input-size where given (checked against what each file
    fixes), else what the files fix, symbolic image dims filled from 3,224,224."""

    def show(dims: tuple[int | None, ...]) -> str:
        return ",".join("?" if d is None else str(d) for d in dims)

    if input_size is not None:
        for t, d in declared.items():
            fits = len(d.dims) == len(input_size) and all(
                want in (None, got) for want, got in zip(d.dims, input_size, strict=True)
            )
            if not fits:
                raise ConfigError(
                    f"{t} takes input {show(d.dims)}, not --input-size "
                    f"{','.join(map(str, input_size))}",
                    f"pass --input-size {show(d.dims).replace('?', 'N')} (N: any size)"
                    if None in d.dims
                    else f"pass --input-size {show(d.dims)}, or drop it",
                )
        return input_size
    ranks = {len(d.dims) for d in declared.values()}
    merged: list[int | None] = [None] * max(ranks) if declared else list(DEFAULT_CHW)
    for d in declared.values():
        for i, v in enumerate(d.dims):
            clash = v is not None and merged[i] is not None and merged[i] != v
            if len(ranks) > 1 or clash:
                sizes = ", ".join(f"{t} {show(e.dims)}" for t, e in declared.items())
                raise ConfigError(
                    f"the targets take different input sizes ({sizes})",
                    "profile them separately, or pass --input-size for models that accept any size",
                )
            merged[i] = v if v is not None else merged[i]
    if None in merged:
        if len(merged) != len(DEFAULT_CHW):
            raise ConfigError(
                f"the input's size is not fixed ({show(tuple(merged))})",
                f"pass --input-size with {len(merged)} values, e.g. "
                f"--input-size {','.join(str(v or 16) for v in merged)}",
            )
        merged = [DEFAULT_CHW[i] if v is None else v for i, v in enumerate(merged)]
    return [int(v) for v in merged if v is not None]


def _batch_sizes(declared: dict[str, Declared], asked: list[int]) -> list[int]:
    """The asked batch sizes every target takes: a file may fix its batch (often at 1), an
    engine takes its profile's range."""
    bounded = {t: d for t, d in declared.items() if d.batches is not None}
    usable = [b for b in asked if all(d.takes(b) for d in bounded.values())]
    where = ", ".join(f"{t} takes {d.says()}" for t, d in bounded.items())
    if not usable:
        lows = [d.batches[0] for d in bounded.values() if d.batches]
        raise ConfigError(
            f"no batch size to profile: {where}",
            f"pass --batch-sizes {max(lows)}, or export with a dynamic batch",
        )
    if usable != asked:
        dropped = ", ".join(str(b) for b in asked if b not in usable)
        ui.info(f"profile: {where}; batch {dropped} skipped")
    return usable


def _check_takes(runners: list[Runner], x: torch.Tensor) -> None:
    """One call per model before timing, so a model that cannot take this input is named in
    one line instead of failing inside the timing loop."""
    for r in runners:
        try:
            r.predict(x)
        except Exception as e:  # onnxruntime, TensorRT and user models raise their own types
            first = first_line(e)
            raise ConfigError(
                f"{r.target.model} ({r.target.backend}) fails on input "
                f"{','.join(map(str, x.shape[1:]))}: {first}",
                "pass --input-size with the shape it takes",
            ) from None


def _distinct(targets: list[str]) -> dict[str, str]:
    """Names for files of one name in different folders (a/student.onnx, b/student.onnx): the
    shortest end of their folder paths that tells them apart, then the name."""
    files = [Path(t) for t in targets if Path(t).suffix in (".onnx", ".plan")]
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(f.stem.split(".")[0], []).append(f)
    out: dict[str, str] = {}
    for name, group in groups.items():
        folders = [f.resolve().parent.parts for f in group]
        if len(set(folders)) < 2:
            continue
        depth = 1
        while len({p[-depth:] for p in folders}) < len(set(folders)):
            depth += 1
        for f, parts in zip(group, folders, strict=True):
            out[str(f)] = "/".join((*parts[-depth:], name)).lstrip("/")
    return out


def profile_targets(targets: list[str], p: ProfileConfig, input_size: list[int] | None) -> dict:
    threads = p.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    runners: list[Runner] = []
    declared: dict[str, Declared] = {}
    named: list[tuple[str, str | None]] = []
    for t in targets:
        is_run = (Path(t) / "config.yaml").is_file()
        named += run_dir_targets(Path(t)) if is_run else [(t, None)]
    distinct = _distinct(targets)
    named = [(t, name or distinct.get(t)) for t, name in named]
    for t, name in named:
        found, says = runners_for(t, threads, name=name)
        runners += found
        if says is not None:
            declared[t] = says
    if not runners:
        raise ConfigError("nothing to profile here", "see the skipped targets above")
    names = [r.target for r in runners]
    if len(set(names)) != len(names):
        raise ConfigError("two targets have the same name", "rename one of the files")
    chw = _shape(declared, input_size)
    p = p.model_copy(update={"batch_sizes": _batch_sizes(declared, p.batch_sizes)})
    check_input_fits(max(p.batch_sizes), chw)
    sample = torch.randn(max(p.batch_sizes), *chw, generator=torch.Generator().manual_seed(0))
    _check_takes(runners, sample[: p.batch_sizes[0]])

    def alone() -> list[Runner]:
        return [r for t, name in named for r in runners_for(t, threads, alone=True, name=name)[0]]

    latency, samples = time_runners(runners, sample, p, alone)
    mem = {}
    if p.memory:
        shape = [max(p.batch_sizes), *chw]
        measured = memory.measure_all([{**r.memory_spec, "shape": shape} for r in runners])
        for r, m in zip(runners, measured, strict=True):
            mem[f"{r.target.model}.{r.target.backend}.{r.target.precision}"] = m
    return {
        "input_size": chw,
        "latency": latency,
        "memory": mem,
        "sizes": {
            f"{r.target.model}.{r.target.backend}.{r.target.precision}": r.size_bytes
            for r in runners
        },
        "settings": settings_record(p, threads),
        "environment": environment.describe(threads),
        "samples": samples,
    }


def _engine_runners(path: Path, name: str, threads: int) -> tuple[list[Runner], Declared | None]:
    """A TensorRT plan's runner, and the input dims and batch range it was built for."""
    reason = tensorrt.unavailable_reason()
    if reason:
        ui.info(f"profile: {path} skipped: {reason}")
        return [], None
    engine = tensorrt.TensorRTRunner(path)
    dims, batches = engine.input_dims()  # what the engine was built for
    runners, _ = runners_of([Model(name, plans={"engine": engine})], threads)
    return runners, Declared(dims, batches)
