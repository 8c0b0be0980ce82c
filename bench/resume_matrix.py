"""Every distillation method killed with SIGKILL mid-training and resumed, against the same run
left alone: is the resumed student equal, tensor for tensor?

    python bench/resume_matrix.py [--methods kd,fitnet,...] [--kill-at 6,13] [--nproc 2]

Runs `kdpipe run` as a user would (resnet18 teacher trained once and cached, mobilenet_v3_small
student, 16 px, 2 epochs of 9 steps, `--checkpoint-every 4`, until distill). KDPIPE_FAULT kills
the run after the N-th optimizer step (with `--nproc`, rank 1 alone; the launcher then stops
rank 0); rerunning the same command resumes from the last checkpoint. Step 6 falls between the
step-4 checkpoint and the next; step 13 is in the second epoch (for FitNets, AB, FT and FSP in
their second stage, for TAKD in its assistant's second epoch). The CI tests do this for KD,
FitNets, TAKD and the adversarial method (tests/e2e/test_resume.py); this checks them all
(~25 s per method and kill point on 2 CPU cores). A check, not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdpipe.distill.methods import all_methods

# What some methods need besides the common arguments.
EXTRA = {
    "takd": ["--assistant", "mobilenet_v3_small"],
    "dml": ["--peers", "mobilenet_v3_small"],
    # MobileNetV3's Hardswish has no double backward, which Jacobian matching needs
    "jacobian": ["--student", "resnet18"],
}


FAULTS = str(Path(__file__).resolve().parents[1] / "tests" / "faults")  # KDPIPE_FAULT's hooks


def kdpipe(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    if "KDPIPE_FAULT" in env:
        env = {**env, "PYTHONPATH": os.pathsep.join([FAULTS, env.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "kdpipe", *args], capture_output=True, text=True, env=env
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(sorted(all_methods())))
    parser.add_argument("--kill-at", default="6,13", help="optimizer steps to kill after")
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="kdpipe-resume-"))
    env = {**os.environ, "KDPIPE_CACHE": str(work / "cache")}
    common = ["run", "--teacher", "resnet18", "--student", "mobilenet_v3_small"]
    common += ["--image-size", "16", "--teacher-epochs", "1", "--epochs", "2"]
    common += ["--checkpoint-every", "4", "--until", "distill", "--quiet"]
    if args.nproc > 1:
        common += ["--nproc", str(args.nproc)]
    fault = {"KDPIPE_FAULT_RANK": "1"} if args.nproc > 1 else {}
    print("| method | killed after step | killed | resumed student |")
    print("|---|---|---|---|")
    for method in args.methods.split(","):
        run = [*common, "--method", method, *EXTRA.get(method, [])]  # a later --student wins
        start = time.perf_counter()
        whole = work / method / "whole"
        done = kdpipe([*run, "--out", str(whole)], env)
        if done.returncode:
            print(f"| {method} | | | uninterrupted run failed: {done.stderr.strip()[-200:]} |")
            continue
        expected = torch.load(whole / "distill" / "student.pt", weights_only=True)
        for step in args.kill_at.split(","):
            out = work / method / f"killed-{step}"
            killed = kdpipe(
                [*run, "--out", str(out)], {**env, **fault, "KDPIPE_FAULT": f"step:{step}"}
            )
            resumed = kdpipe([*run, "--out", str(out)], env)
            if killed.returncode == 0:
                verdict = "not killed: the run has fewer steps"
            elif resumed.returncode:
                verdict = f"resume failed: {resumed.stderr.strip()[-200:]}"
            else:
                got = torch.load(out / "distill" / "student.pt", weights_only=True)
                differ = [k for k, t in expected.items() if not torch.equal(got[k], t)]
                verdict = (
                    "identical" if not differ else f"{len(differ)} tensors differ ({differ[0]})"
                )
            took = time.perf_counter() - start
            print(
                f"| {method} | {step} | exit {killed.returncode} | {verdict} ({took:.0f} s) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
