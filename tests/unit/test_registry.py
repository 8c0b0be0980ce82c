"""GPU paths: TensorRT engines and CUDA backends. They run where a GPU is present and skip
here with the reason; the skip logic itself is tested on every machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdpipe.core.errors import BackendUnavailable
from kdpipe.runtimes import tensorrt
from kdpipe.runtimes.registry import Model, runners_of

TRT_REASON = tensorrt.unavailable_reason()


def test_unavailable_tensorrt_says_why_and_refuses_to_fake() -> None:
    if TRT_REASON is None:
        pytest.skip("TensorRT is available here; the refusal path is not reachable")
    assert "TensorRT" in TRT_REASON or "CUDA" in TRT_REASON
    with pytest.raises(BackendUnavailable):
        tensorrt.build_engine(
            Path("x.onnx"), Path("x.plan"), (3, 32, 32), [1, 8, 32], "fp32", Path("c")
        )


def test_profiler_lists_every_backend_it_cannot_use(onnx_model, tmp_path: Path) -> None:
    model, path = onnx_model
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    runners, skipped = runners_of(
        [
            Model("teacher", model, weights=weights),
            Model("student", model, weights=weights, onnx={"fp32": path}),
        ],
        threads=2,
    )
    backends = {r.target.backend for r in runners} | {s["backend"] for s in skipped}
    assert backends == {
        "torch-cpu",
        "torch-cuda",
        "ort-cpu",
        "ort-cuda",
        "ort-tensorrt",
        "ov-cpu",
        "tensorrt",
    }
    assert all(s["reason"] for s in skipped)
    x = torch.randn(3, 3, 32, 32)
    expected = model(x).detach()
    for r in runners:  # every available backend gives the model's logits
        # OpenVINO computes in bf16 where the CPU has it, and says so: 8 mantissa bits
        atol = 0.05 * float(expected.abs().max()) if r.target.precision == "bf16" else 1e-3
        assert torch.allclose(r.predict(x), expected, atol=atol), r.target
        # The call the profiler times computes the same thing; on onnxruntime's and OpenVINO's
        # CPU backends it runs a ready numpy feed, its output not turned into a tensor.
        out = r.timed_call(x)()
        if r.target.backend in ("ort-cpu", "ov-cpu"):
            assert isinstance(out[0], np.ndarray)
            out = torch.from_numpy(np.asarray(out[0]))
        assert torch.allclose(out, expected, atol=atol), r.target


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_and_ort_cuda_match_cpu(onnx_model) -> None:
    model, path = onnx_model
    x = torch.randn(4, 3, 32, 32)
    runners, _ = runners_of(
        [
            Model("teacher", model, weights=path),
            Model("student", model, weights=path, onnx={"fp32": path}),
        ],
        threads=2,
    )
    gpu = [r for r in runners if r.target.backend in ("torch-cuda", "ort-cuda")]
    assert gpu
    for r in gpu:
        assert torch.allclose(r.predict(x), model(x).detach(), atol=1e-2)


@pytest.mark.tensorrt
@pytest.mark.skipif(TRT_REASON is not None, reason=f"TensorRT unavailable: {TRT_REASON}")
def test_tensorrt_engine_matches_pytorch(onnx_model, tmp_path: Path) -> None:
    model, path = onnx_model
    plan = tmp_path / "m.plan"
    meta = tensorrt.build_engine(path, plan, (3, 32, 32), [1, 4, 8], "fp32", tmp_path / "cache")
    assert plan.is_file() and (tmp_path / "cache").is_file() and meta["strongly_typed"]
    runner = tensorrt.TensorRTRunner(plan)
    for bs in (1, 4, 8):
        x = torch.randn(bs, 3, 32, 32)
        got = runner(x.cuda()).cpu()
        assert torch.allclose(got, model(x).detach(), atol=1e-2)
