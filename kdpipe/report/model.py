"""report.json as a typed model: what `build_report` fills in, and the JSON schema checked in
as docs/report-schema.json (`python -m kdpipe.report.model > docs/report-schema.json`; a test
fails when the two differ). Sub-objects whose fields vary with the run (a method's loss
terms, the export precisions, the machine) are open mappings; docs/report-schema.md says what
each holds."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel

SCHEMA_VERSION = "1.0"

Json = dict[str, Any]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunInfo(_Closed):
    name: str
    out: str
    config: Json = Field(description="the resolved configuration, as config.yaml")


class Parity(_Closed):
    """An exported model's logits against PyTorch's on the same test images (export/verify)."""

    samples: int
    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float
    accuracy: float
    reference_accuracy: float


class OpenVinoParity(_Closed):
    inference_precision: str = Field(description="what OpenVINO computed float layers in")
    parity: Parity


class ExportedFile(BaseModel):
    """One exported ONNX file and its parity; how it was made (exporter, opset, the FP16
    conversion or INT8 quantization and its guard) varies with the precision."""

    model_config = ConfigDict(extra="allow")
    file: str
    size_bytes: int
    parity: Parity = Field(description="on onnxruntime")
    openvino: OpenVinoParity | None = None
    accuracy_drop_vs_fp32: float | None = None


class ExportResult(RootModel[dict[str, ExportedFile]]):
    """export/export.json: the student's exported files by precision (fp32, fp16, int8)."""

    def as_json(self) -> dict[str, Json]:
        return self.model_dump(mode="json", exclude_unset=True)


class TeacherSummary(_Closed):
    arch: str
    accuracy: float = Field(description="test top-1, torch FP32")
    params: int
    flops: int = Field(description="FLOPs for one image (multiply-add = 2)")
    size_bytes: int
    source: str | None = Field(description="trained | fine-tuned | cache | weights")
    train_seconds: float | None
    onnx: ExportedFile | None = Field(None, description="export/teacher.onnx and its parity")


class StudentSummary(_Closed):
    arch: str
    method: str
    method_params: dict[str, float]
    accuracy: float
    agreement_with_teacher: float
    params: int
    flops: int
    size_bytes: int
    train_seconds: float
    teacher_cache: bool
    teacher_cache_source: str | None = Field(description="computed | disk | null")
    teacher_precision: str = Field(description="fp32 | bf16 | fp16")
    history: list[Json] = Field(description="one object per epoch: losses, val_accuracy, ...")


class ModelRow(_Closed):
    model: str
    backend: str
    precision: str
    accuracy: float
    agreement_with_teacher: float
    params: int
    flops: int
    size_bytes: int
    memory: Json | None = None


class LatencyRow(BaseModel):
    """One model x backend x precision x batch size; GPU rows add `device` times."""

    model_config = ConfigDict(extra="allow")
    model: str
    backend: str
    precision: str
    batch_size: int
    iters: int
    min_ms: float
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    cv: float
    throughput: float


class LayerRow(_Closed):
    """One operator type in one precision, over one call (profile/layers.py)."""

    op: str
    precision: str = Field(description="int8 | fp32 | bf16 | fp16 | convert (Q/DQ)")
    ms: float = Field(description="per call, under the runtime's profiler")
    share: float = Field(description="of the call's operator time")
    nodes: int


class ProfileResult(_Closed):
    """profile/results.json: what the profile stage measured, read back whole or not at all."""

    models: list[ModelRow]
    latency: list[LatencyRow]
    layers: dict[str, list[LayerRow]] = Field(
        default_factory=dict, description="the student's CPU forms by operator, BACKEND.PRECISION"
    )
    skipped_backends: list[dict[str, str]]
    settings: Json
    environment: Json

    def as_json(self) -> Json:
        return self.model_dump(mode="json", exclude_unset=True)


class Form(_Closed):
    backend: str
    precision: str
    p50_ms: float


class FastestForm(_Closed):
    batch_size: int
    backend: str
    precision: str
    p50_ms: float = Field(description="alone, as an application running it sees it")
    interleaved_p50_ms: float = Field(description="what forms were compared by")
    accuracy: float


class SpeedupBasis(_Closed):
    batch_size: int
    teacher: Form
    student: Form
    measured: str


class Summary(_Closed):
    accuracy_retention: float
    accuracy_drop: float
    speedup_vs_teacher: float | None
    speedup_basis: SpeedupBasis
    torch_speedup_vs_teacher: float | None
    ort_speedup_vs_teacher: float | None
    param_compression: float
    flops_compression: float | None
    size_compression: float
    fastest_forms: list[FastestForm] = Field(
        default_factory=list,
        description="per batch size, the student's fastest form within the allowed accuracy drop",
    )
    shipped: FastestForm | None = Field(
        None, description="the bundle's default: the fastest CPU form at profile.ship_batch"
    )
    upsets: list[str] = Field(
        default_factory=list, description="where INT8 lost to FP32 or a runtime to another"
    )


class StageTime(_Closed):
    seconds: float
    reused: bool


class Report(_Closed):
    """Everything a run measured, in the order report.json lists it."""

    schema_version: str = SCHEMA_VERSION
    kdpipe_version: str
    created_at: str
    run: RunInfo
    data: Json
    teacher: TeacherSummary
    student: StudentSummary
    export: dict[str, ExportedFile] = Field(description="the student's ONNX files by precision")
    models: list[ModelRow]
    latency: list[LatencyRow]
    layers: dict[str, list[LayerRow]] = Field(default_factory=dict)
    summary: Summary
    skipped_backends: list[dict[str, str]]
    profile_settings: Json
    environment: Json
    stages: dict[str, StageTime]
    tensorrt: Json = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict, description="what budgets name")

    def as_json(self) -> Json:
        """The report as written: fields left out where they do not apply (teacher.onnx)."""
        return self.model_dump(mode="json", exclude_unset=True)


def schema_text() -> str:
    return json.dumps(Report.model_json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(schema_text(), end="")
