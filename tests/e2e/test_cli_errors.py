"""Every kind of bad input: one `error:` line and a `hint:`, exit 2, no traceback, nothing clobbered."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdpipe.api import run
from kdpipe.core.config import RunConfig
from kdpipe.core.errors import ConfigError
from kdpipe.models import create
from kdpipe.parallel.runlock import RunLock
from tests.e2e.helpers import kdpipe, kdpipe_here


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    junk = d / "junk.pt"
    junk.write_bytes(b"\x00garbage, not a checkpoint")
    wrong = d / "resnet18_3classes.pt"
    torch.save(create("resnet18", 3).state_dict(), wrong)
    damaged = d / "resnet18_flipped.pt"  # weights that fit, one bit changed after saving
    raw = bytearray(wrong.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    damaged.write_bytes(bytes(raw))
    blocker = d / "a_file"
    blocker.write_text("x")
    cfg = d / "typo.yaml"
    cfg.write_text("distill:\n  methd: kd\n")
    laughs = d / "laughs.yaml"  # 10^10 values once its aliases are expanded
    laughs.write_text(
        "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n" for i in range(1, 10))
        + "distill: {method: *l9}\n"
    )
    (d / "deep.toml").write_text("distill = " + "[" * 50_000 + "]" * 50_000 + "\n")
    (d / "flat.yaml").write_text("epochs: 3\n")  # distill.train.epochs, written at the top
    png = np.zeros((8, 8), dtype=np.uint8)
    for name, classes in (("single", ["a"]), ("broken", ["a", "b"]), ("empty", [])):
        for c in classes:
            (d / name / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(png + i).save(d / name / c / f"{i}.png")
    (d / "empty" / "a").mkdir(parents=True)
    for folder in (b"newline/a\nb", b"newline/c", b"latin1/caf\xe9", b"latin1/the"):
        os.makedirs(os.fsencode(d) + b"/" + folder)
        for i in range(4):
            Image.fromarray(png + i).save(os.fsencode(d) + b"/" + folder + b"/%d.png" % i)
    (d / "broken" / "b" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    foreign = d / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    evil = d / "evil.pt"
    torch.save({"fc.weight": torch.zeros(1), "x": Payload(d / "pwned")}, evil)
    return {
        "junk": junk,
        "wrong": wrong,
        "damaged": damaged,
        "blocker": blocker,
        "typo": cfg,
        "dir": d,
        "evil": evil,
    }


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what a plain (unsafe) unpickle would execute
        return (Path.touch, (self.marker,))


CASES = {
    "unknown teacher": (["--teacher", "resnet500"], "unknown model 'resnet500'"),
    "unknown student": (["--student", "mobilenet_v9"], "unknown model 'mobilenet_v9'"),
    "unknown dataset": (["--data", "cifar11:/tmp"], "unknown dataset"),
    "missing data path": (["--data", "imagefolder:/nonexistent/kdpipe"], "does not exist"),
    "missing cifar files": (["--data", "cifar10:{dir}"], "missing or not the official ones"),
    "garbage weights": (["--teacher-weights", "{junk}"], "not a readable PyTorch file"),
    "mismatched weights": (["--teacher", "resnet18", "--teacher-weights", "{wrong}"], "do not fit"),
    "damaged weights": (
        ["--teacher", "resnet18", "--teacher-weights", "{damaged}"],
        "fails its CRC-32 check",
    ),
    "missing weights": (["--student-weights", "/nonexistent.pt"], "does not exist"),
    "fine-tune without weights": (["--fine-tune-teacher"], "--fine-tune-teacher needs --teacher"),
    "zero fine-tune lr": (["--fine-tune-lr", "0"], "teacher.fine_tune_lr"),
    "unwritable out": (["--out", "{blocker}/sub"], "cannot write to output directory"),
    "out is a file": (["--out", "{blocker}"], "is a file, not a folder"),
    "weights are a folder": (["--teacher-weights", "{dir}"], "is a folder, not a file"),
    "weights are a device": (["--teacher-weights", "/dev/zero"], "is not a regular file"),
    # bytes from a Latin-1 shell: onnx's C++ takes UTF-8 paths (the run failed at export)
    "out is not UTF-8": (["--out", "{dir}/caf\udce9"], "is not valid UTF-8"),
    "name is not UTF-8": (["--name", "caf\udce9"], "is not valid UTF-8"),
    "data folder is a device": (["--data", "imagefolder:/dev/null"], "/dev/null is not a folder"),
    "data folder is a file": (["--data", "imagefolder:{blocker}"], "is a file, not a folder"),
    "binary config": (["--config", "{wrong}"], "is not text"),
    "zero epochs": (["--epochs", "0"], "distill.train.epochs"),
    "zero teacher lr": (["--teacher-lr", "0"], "teacher.train.lr"),
    "bad precision": (["--precision", "fp32,fp8"], "export.precisions"),
    "unknown augmentation": (["--augment", "rotate"], "invalid value for data.augment"),
    "crop scale above 1": (["--crop-scale", "1.5"], "data.crop_scale"),
    "centre crop of nothing": (["--center-crop", "0"], "data.center_crop"),
    "centre crop of digits": (["--center-crop", "0.875"], "--center-crop applies to image files"),
    "too many loader workers": (["--workers", "99"], "data.workers"),
    "bad batch sizes": (["--batch-sizes", "1,x"], "--batch-sizes"),
    "bad --set": (["--set", "T"], "--set takes NAME=NUMBER"),
    "unknown method param": (["--set", "temp=3", "--teacher-epochs", "1"], "no parameter 'temp'"),
    "unknown method": (["--method", "kdd"], "unknown distillation method"),
    "not an int": (["--epochs", "many"], "--epochs"),
    "unknown option": (["--epoch", "3"], "No such option"),
    "config typo": (["--config", "{typo}"], "unknown config key 'distill.methd'"),
    "missing config": (["--config", "/nonexistent.yaml"], "cannot read config file"),
    "yaml alias bomb": (["--config", "{dir}/laughs.yaml"], "expands to more than 100000 values"),
    "config nested too deeply": (["--config", "{dir}/deep.toml"], "is nested too deeply"),
    "endless config": (["--config", "/dev/zero"], "is larger than 1 MiB; is it the right file?"),
    "config key above its section": (["--config", "{dir}/flat.yaml"], "belongs in a section"),
    "bad force": (["--force", "everything"], "unknown stage"),
    "takd without assistant": (["--method", "takd"], "needs at least one teacher assistant"),
    "peers without dml": (["--peers", "resnet18"], "--peers is for deep mutual learning"),
    "unknown peer": (["--method", "dml", "--peers", "resnet9"], "unknown model 'resnet9'"),
    "unknown term": (["--terms", "kd=0.9,att=1000"], "unknown distillation method 'att'"),
    "bad term weight": (["--terms", "kd=x"], "--terms takes NAME=NUMBER"),
    "NaN term weight": (["--terms", "kd=nan,ce=1"], "term weights must be finite and >= 0"),
    "seed past 32 bits": (["--seed", str(2**32)], "seed"),
    "profile batch past memory": (
        ["--batch-sizes", "1,10000000"],  # 123 GB of 3x32x32 inputs
        "of memory free here",
    ),
    "bad transfer": (["--transfer", "folder:/x"], "unknown transfer set"),
    "missing transfer folder": (["--transfer", "imagefolder:/nonexistent"], "does not exist"),
    "bad label fraction": (["--label-fraction", "0"], "distill.label_fraction"),
    "bad until": (["--until", "deploy"], "unknown stage 'deploy'"),
    "foreign out dir": (["--out", "{dir}/foreign"], "not a kdpipe run"),
    # Refused by the --nproc launcher itself, before any worker starts.
    "foreign out dir, --nproc 2": (["--nproc", "2", "--out", "{dir}/foreign"], "not a kdpipe run"),
    "unknown teacher, --nproc 2": (["--nproc", "2", "--teacher", "resnet9"], "unknown model"),
    "no processes": (["--nproc", "0"], "--nproc"),
    "restarts without processes": (["--max-restarts", "2"], "--max-restarts restarts the"),
    "batch below processes, --nproc 4": (
        ["--nproc", "4", "--batch-size", "2"],
        "batch size 2 is smaller than the 4 processes",
    ),
    "empty dataset": (["--data", "imagefolder:{dir}/empty"], "no images found"),
    "single-class dataset": (["--data", "imagefolder:{dir}/single"], "single class"),
    "undecodable image, strict": (
        ["--data", "imagefolder:{dir}/broken", "--strict-data"],
        "cannot be decoded",
    ),
    "malicious weights": (["--teacher", "resnet18", "--teacher-weights", "{evil}"], "refused"),
    # Class folder names are the labels (labels.txt: one per line, UTF-8).
    "class name with a line break": (
        ["--data", "imagefolder:{dir}/newline"],
        "'a\\nb' in",
    ),
    "class name not UTF-8": (["--data", "imagefolder:{dir}/latin1"], "is not UTF-8"),
    # Models that cannot take the data's 32x32 images are refused before the teacher trains.
    "student too small for input": (["--student", "alexnet"], "--image-size 64"),
    "fixed-size student": (["--student", "vit_b_16"], "Expected 224 but got 32"),
}


# Run as a real `python -m kdpipe` process; the other cases call the same entry point in this
# process, which spares an interpreter start and torch's import (~10 s a case on a slow CI
# machine) and still fails on a traceback: an exception that escapes fails the test.
IN_A_PROCESS = {"unknown teacher", "malicious weights", *(c for c in CASES if "--nproc" in c)}


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str], process: bool) -> tuple[int, str]:
    """Exit code and stderr of `kdpipe ARGS`."""
    ran = kdpipe(*args) if process else kdpipe_here(capsys, *args)
    return ran.returncode, ran.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2(
    case: str, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args, expected = CASES[case]
    args = [a.format(**files) for a in args]
    out = files["dir"] / "out"
    out.mkdir(exist_ok=True)
    precious = out / "report.json"
    precious.write_text('{"keep": true}')
    (out / "config.yaml").write_text("{}\n")  # a kdpipe run directory
    extra = [] if any(a == "--out" for a in args) else ["--out", str(out)]
    code, stderr = run_cli(["run", *args, *extra, "--quiet"], capsys, case in IN_A_PROCESS)
    assert code == 2, (case, stderr)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("error: ") and expected in stderr, stderr
    assert len([ln for ln in lines if ln.startswith("error:")]) == 1
    assert any(ln.startswith("hint: ") for ln in lines)
    assert "Traceback" not in stderr
    assert precious.read_text() == '{"keep": true}'
    assert not (files["dir"] / "pwned").exists()  # the malicious pickle ran nothing
    assert (files["dir"] / "foreign" / "thesis.tex").read_text() == "mine"


def test_debug_shows_the_traceback(files: dict[str, Path]) -> None:
    proc = kdpipe(
        "run", "--teacher-weights", str(files["junk"]), "--debug", "--out", str(files["dir"] / "o")
    )
    assert proc.returncode == 2 and "Traceback" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["export", "--arch", "resnet18", "--weights", "{evil}", "--out", "{dir}/exp"],
        ["profile", "resnet18:{evil}", "--min-iters", "1"],
    ],
    ids=["export", "profile"],
)
def test_malicious_pickle_is_refused_by_every_entry_point(
    args: list[str], files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # In this process: a payload that ran would write its file from here just the same.
    proc = kdpipe_here(capsys, *[a.format(**files) for a in args], "--quiet")
    assert proc.returncode == 2, proc.stderr
    assert "refused" in proc.stderr and "Traceback" not in proc.stderr
    assert not (files["dir"] / "pwned").exists()


# Prints, as the process ends, whether torch was ever imported.
NO_TORCH_PROBE = """
import atexit, sys
atexit.register(lambda: print("torch imported" if "torch" in sys.modules else "torch never imported"))
from kdpipe.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize(
    "case",
    ["zero epochs", "bad force", "bad until", "config typo", "yaml alias bomb", "foreign out dir"],
)
def test_config_errors_fail_before_torch_is_imported(case: str, files: dict[str, Path]) -> None:
    """Importing torch and torchvision takes seconds; a typo should not wait for it."""
    args, expected = CASES[case]
    args = [a.format(**files) for a in args]
    extra = [] if "--out" in args else ["--out", str(files["dir"] / "fresh")]
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH_PROBE, "run", *args, *extra, "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert proc.stdout.strip() == "torch never imported"


@pytest.mark.parametrize(
    "args",
    [
        ["profile", "resnet18", "--threads", "0"],
        ["export", "--arch", "resnet18", "--weights", "{wrong}", "--precision", "fp8"],
    ],
    ids=["profile", "export"],
)
def test_a_bad_value_points_to_its_own_commands_help(
    args: list[str], files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, stderr = run_cli([*(a.format(**files) for a in args), "--quiet"], capsys, False)
    assert code == 2 and "invalid value for" in stderr, stderr
    assert f"hint: see `kdpipe {args[0]} --help`" in stderr


def test_export_of_a_run_refuses_data_options_it_would_ignore(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # The run's own data decides the bundle's preprocessing; --center-crop here was ignored.
    args = ["export", str(files["dir"]), "--center-crop", "0.875", "--image-size", "64"]
    code, stderr = run_cli([*args, "--quiet"], capsys, False)
    assert code == 2, stderr
    assert "--image-size, --center-crop do not apply to a run directory" in stderr


def test_a_run_directory_in_use_is_refused_untouched(files: dict[str, Path]) -> None:
    """A second `kdpipe run` into a directory another run holds (runlock.py) writes nothing:
    refused by the CLI before torch is imported, and by api.run itself (torchrun's rank 0)."""
    out = files["dir"] / "busy"
    out.mkdir()
    (out / "config.yaml").write_text("epochs: 3\n")
    (out / "report.json").write_text('{"keep": true}')
    with RunLock(out):  # this test process plays the run in progress
        proc = subprocess.run(
            [sys.executable, "-c", NO_TORCH_PROBE, "run", "--out", str(out), "--quiet"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        with pytest.raises(ConfigError, match="in use by another kdpipe run"):
            run(RunConfig.model_validate({"out": str(out), "distill": {"train": {"epochs": 1}}}))
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    assert lines[0] == f"error: {out} is in use by another kdpipe run ({holder})"
    assert lines[1].startswith("hint: wait for that run to finish") and len(lines) == 2
    assert proc.stdout.strip() == "torch never imported"
    assert (out / "config.yaml").read_text() == "epochs: 3\n"
    assert (out / "report.json").read_text() == '{"keep": true}'
    assert sorted(p.name for p in out.iterdir()) == [".kdpipe.lock", "config.yaml", "report.json"]


def test_under_torchrun_a_batch_smaller_than_the_world_is_refused(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # torchrun describes the world in the environment; every rank refuses before it joins.
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    out = files["dir"] / "torchrun-out"
    ran = kdpipe_here(capsys, "run", "--batch-size", "2", "--out", str(out), "--quiet")
    assert ran.returncode == 2, ran.stderr
    assert "the teacher batch size 2 is smaller than the 3 processes" in ran.stderr
    assert "hint: --batch-size is the global batch" in ran.stderr
    assert not out.exists()


def test_a_batch_that_does_not_split_evenly_is_noted(capsys: pytest.CaptureFixture[str]) -> None:
    from kdpipe.api.pipeline import note_uneven_batches

    cfg = RunConfig.model_validate({"distill": {"train": {"batch_size": 128}}})
    note_uneven_batches(cfg, 3)
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("note:") == 1  # one note for teacher and student alike
    assert "teacher and student batch size 128 is not a multiple of 3 processes" in err
    assert "each takes 42, 126 images per step" in err
    note_uneven_batches(cfg, 2)
    assert "note" not in capsys.readouterr().err


def test_a_full_disk_is_one_line_naming_the_file_not_an_internal_error(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdpipe.distill import checkpoint

    real_open = open  # every checkpoint write lands on /dev/full: "No space left on device"
    monkeypatch.setattr(
        checkpoint, "open", lambda p, mode: real_open("/dev/full", "wb"), raising=False
    )
    out = files["dir"] / "full-disk"
    env = {"KDPIPE_CACHE": str(files["dir"] / "cache")}
    ran = kdpipe_here(
        capsys,
        *("run", "--teacher", "resnet18", "--student", "resnet18", "--image-size", "16"),
        *("--teacher-epochs", "1", "--epochs", "1", "--checkpoint-every", "2"),
        *("--until", "distill", "--out", str(out), "--quiet"),
        env=env,
    )
    assert ran.returncode == 1, ran.stderr
    err = " ".join(ran.stderr.split())
    path = out / "teacher" / "checkpoints" / "last.pt"
    assert f"error: cannot write {path}: No space left on device" in err
    assert "hint: free space on that disk" in err and "internal error" not in err
    assert "Traceback" not in ran.stderr


def _allocate_32_tib(*args: object) -> None:
    torch.empty(1 << 45, dtype=torch.uint8)  # the CPU allocator really refuses


def _cuda_out_of_memory(*args: object) -> None:
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("fails", [_allocate_32_tib, _cuda_out_of_memory])
def test_out_of_memory_is_one_line_saying_so(
    fails: object,
    files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A batch too large for the GPU (or the machine) was "internal error ... report it".
    from kdpipe.stages import teacher

    monkeypatch.setattr(teacher, "run_teacher_stage", fails)
    out = files["dir"] / f"oom-{getattr(fails, '__name__', '')}"
    ran = kdpipe_here(capsys, "run", "--until", "teacher", "--out", str(out), "--quiet")
    assert ran.returncode == 1, ran.stderr
    err = " ".join(ran.stderr.split())
    assert err.startswith("error: out of memory: ") and "internal error" not in err
    assert "hint: use smaller batches or images (--batch-size is the global batch" in err


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but RANK, MASTER_ADDR, MASTER_PORT are not"),
        ({"WORLD_SIZE": "two"}, "environment variable WORLD_SIZE='two' is not a whole number"),
    ],
)
def test_a_stray_world_size_without_torchrun_is_one_line(
    env: dict[str, str],
    expected: str,
    files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Left in a shell from an earlier job: init_process_group's ValueError was an internal error.
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    out = files["dir"] / "stray-world"
    ran = kdpipe_here(capsys, "run", "--out", str(out), "--quiet")
    assert ran.returncode == 2 and expected in " ".join(ran.stderr.split()), ran.stderr
    assert not out.exists()
