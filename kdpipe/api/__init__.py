"""The public Python API. `run(cfg)` is the whole pipeline; the CLI is a thin layer over it.

    from kdpipe.api import run
    from kdpipe.core.config import RunConfig
    report = run(RunConfig())          # resnet50 -> resnet18 on digits

Stages (teacher, distill, export, profile, report) talk only through return values and files
in the run directory. A stage whose input fingerprint matches its last `stage.json` is
skipped and its files are reused; `force` names stages to redo (and everything after them).
"""

from kdpipe.api.pipeline import export_weights, run, validate

__all__ = ["export_weights", "run", "validate"]
