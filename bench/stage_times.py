"""Wall time of each stage of the default `kdpipe run`, fresh and again (the reuse path).

    python bench/stage_times.py [--out DIR] [extra kdpipe run options]

Runs `kdpipe run --teacher resnet50 --student resnet18` twice in a fresh output directory
with an empty teacher cache, and prints each stage's seconds from report.json plus the
total wall time of both runs. This is a benchmark, not a test: figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args, extra = parser.parse_known_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="kdpipe-bench-"))
    env = {**os.environ, "KDPIPE_CACHE": str(work / "cache")}
    cmd = [
        sys.executable,
        "-m",
        "kdpipe",
        "run",
        "--teacher",
        "resnet50",
        "--student",
        "resnet18",
        "--out",
        str(work / "run"),
        "--quiet",
        *extra,
    ]
    rows = []
    for label in ("first run", "second run"):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        report = json.loads((work / "run" / "report.json").read_text())
        rows.append((label, wall, report))
    print(f"{'stage':<10}" + "".join(f"{label:>14}" for label, _, _ in rows))
    for stage in rows[0][2]["stages"]:
        cells = []
        for _, _, r in rows:
            s = r["stages"][stage]
            cells.append(f"{s['seconds']:>9.1f}s{' (r)' if s['reused'] else '    '}")
        print(f"{stage:<10}" + "".join(cells))
    print(f"{'wall':<10}" + "".join(f"{wall:>10.1f}s    " for _, wall, _ in rows))
    r = rows[0][2]
    print(
        f"\nteacher top-1 {r['teacher']['accuracy']:.4f}  student top-1 {r['student']['accuracy']:.4f}  "
        f"int8 top-1 {r['export']['int8']['parity']['accuracy']:.4f}  "
        f"fp32 agreement {r['export']['fp32']['parity']['top1_agreement']:.4f}  "
        f"speedup {r['summary']['speedup_vs_teacher']:.2f}x  (cpu: {r['environment']['cpu']}, "
        f"{r['environment']['threads']} threads)"
    )


if __name__ == "__main__":
    main()
