"""report.json's typed model: the checked-in JSON schema is the model's, and a report that
breaks the model is refused when it is built."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kdpipe.report.model import Report, Summary, schema_text

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "report-schema.json"


def test_the_checked_in_schema_is_the_models() -> None:
    assert SCHEMA.read_text() == schema_text(), (
        "docs/report-schema.json is stale: python -m kdpipe.report.model > docs/report-schema.json"
    )


def test_a_summary_without_its_speedup_basis_is_refused() -> None:
    with pytest.raises(ValidationError, match="speedup_basis"):
        Summary(
            accuracy_retention=1.0,
            accuracy_drop=0.0,
            speedup_vs_teacher=2.0,
            torch_speedup_vs_teacher=None,
            ort_speedup_vs_teacher=None,
            param_compression=2.0,
            flops_compression=2.0,
            size_compression=2.0,
        )  # type: ignore[call-arg]


def test_every_top_level_field_is_documented() -> None:
    doc = (SCHEMA.parent / "report-schema.md").read_text()
    missing = [name for name in Report.model_fields if f"`{name}" not in doc]
    assert missing == []
