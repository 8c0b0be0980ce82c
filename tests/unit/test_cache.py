"""The teacher-logit table kept on disk: keyed by what it was computed from (teacher weights,
images, transforms), reused bit for bit, recomputed when any input changes, never trusted when
the file is damaged or planted; computed in shares under torchrun."""

from __future__ import annotations

import contextlib
import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from kdpipe.core.config import DataConfig
from kdpipe.core.runs import set_writer
from kdpipe.data import load_data
from kdpipe.data.identity import describe_transform, image_identity
from kdpipe.data.transfer import MixedImages, PartiallyLabeled
from kdpipe.data.transforms import eval_transform
from kdpipe.distill.cache import teacher_logits_table, teacher_outputs
from tests.ranks import gloo_rank, two_ranks


def _teacher(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)
    ).eval()


def _images(n: int = 40, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 4)


class _Opaque(Dataset):
    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.zeros(3, 8, 8), 0


def test_identity_follows_the_images_not_the_labels() -> None:
    a = _images()
    x, y = a.tensors
    assert image_identity(a) == image_identity(TensorDataset(x.clone(), y.clone()))
    assert image_identity(TensorDataset(x, y.flip(0))) == image_identity(a)  # labels only
    assert image_identity(PartiallyLabeled(a, 0.5, seed=0)) == image_identity(a)
    changed = x.clone()
    changed[7, 1, 2, 3] += 1e-3
    assert image_identity(TensorDataset(changed, y)) != image_identity(a)
    assert image_identity(Subset(a, [0, 1])) != image_identity(Subset(a, [1, 0]))
    assert image_identity(MixedImages(a, 10, seed=0)) != image_identity(MixedImages(a, 10, seed=1))
    assert image_identity(_Opaque()) is None


def _write_pngs(root: Path) -> None:
    rng = np.random.default_rng(0)
    for k, name in enumerate(["a", "b"]):
        (root / name).mkdir(parents=True)
        for i in range(6):
            pixels = np.clip(rng.normal(80 * k + 40, 20, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_identity_of_image_files_sees_edits_touches_and_transforms(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "imgs")

    def ident(size: int = 16) -> str | None:
        spec = DataConfig(spec=f"imagefolder:{tmp_path / 'imgs'}", image_size=size)
        return image_identity(load_data(spec, seed=0).train)

    first = ident()
    assert first is not None and ident() == first
    assert ident(size=20) != first  # the transform resizes differently
    f = tmp_path / "imgs" / "a" / "0.png"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = ident()
    assert touched != first
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # same time, new pixels
    assert ident() != touched  # the size changed with the content


def test_transform_description_names_lambdas_and_drops_addresses() -> None:
    text = describe_transform(eval_transform(24, [0.5] * 3, [0.25] * 3))
    assert "kdpipe.data.transforms._rgb" in text and "0x" not in text
    assert "24" in text and "0.25" in text
    gray = describe_transform(eval_transform(24, [0.5] * 3, [0.25] * 3, grayscale=True))
    assert gray != text


def test_table_is_stored_then_read_back_bit_for_bit() -> None:
    teacher, data = _teacher(), _images()
    first = teacher_outputs(teacher, data, num_classes=4)
    assert first.source == "computed" and first.path is not None and first.path.is_file()
    assert torch.equal(first.logits, teacher_logits_table(teacher, data))
    again = teacher_outputs(teacher, data, num_classes=4)
    assert again.source == "disk" and again.path == first.path
    assert torch.equal(again.logits, first.logits)


def test_any_changed_input_computes_a_new_table() -> None:
    teacher, data = _teacher(), _images()
    base = teacher_outputs(teacher, data, num_classes=4)
    with torch.no_grad():
        teacher[0].weight[0, 0, 0, 0] += 1e-4  # type: ignore[index]
    retrained = teacher_outputs(teacher, data, num_classes=4)
    assert retrained.source == "computed" and retrained.path != base.path
    other = teacher_outputs(_teacher(), _images(seed=1), num_classes=4)
    assert other.source == "computed" and other.path not in (base.path, retrained.path)
    opaque = teacher_outputs(_teacher(), _Opaque(), num_classes=4)  # no identity: not stored
    assert opaque.source == "computed" and opaque.path is None


def test_damaged_or_planted_files_are_recomputed_never_trusted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, data = _teacher(), _images()
    path = teacher_outputs(teacher, data, num_classes=4).path
    assert path is not None
    expected = teacher_logits_table(teacher, data)

    path.write_bytes(path.read_bytes()[:100])  # cut short
    t = teacher_outputs(teacher, data, num_classes=4)
    assert t.source == "computed" and torch.equal(t.logits, expected)
    assert "ignoring the teacher-logit table" in capsys.readouterr().err

    torch.save({"logits": expected}, path)  # whole, then one bit of a logit changes on disk:
    raw = bytearray(path.read_bytes())  # it still loads, fits and is finite
    raw[raw.index(expected.numpy().tobytes()) + 1] ^= 0x01
    path.write_bytes(bytes(raw))
    t = teacher_outputs(teacher, data, num_classes=4)
    assert t.source == "computed" and torch.equal(t.logits, expected)
    assert "fails its CRC-32 check" in " ".join(capsys.readouterr().err.split())

    torch.save({"logits": torch.zeros(3, 4)}, path)  # whole, but of other data
    t = teacher_outputs(teacher, data, num_classes=4)
    assert t.source == "computed" and torch.equal(t.logits, expected)
    assert "does not fit this data" in capsys.readouterr().err

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (marker.touch, ())

    path.write_bytes(pickle.dumps({"logits": Payload()}, protocol=2))
    t = teacher_outputs(teacher, data, num_classes=4)
    assert t.source == "computed" and torch.equal(t.logits, expected)
    assert not marker.exists()
    # The recomputed table replaced the planted file.
    assert teacher_outputs(teacher, data, num_classes=4).source == "disk"


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ["KDPIPE_CACHE"] = str(Path(out) / "cache")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    set_writer(rank == 0)
    if rank == 0:  # a slow disk: rank 1 must still find the table when it looks again
        import kdpipe.core.runs as runs

        real = runs.atomic_path  # what save_torch writes the table through

        @contextlib.contextmanager
        def slow(path: Path) -> Iterator[Path]:
            with real(path) as tmp:
                yield tmp
                time.sleep(1.0)

        runs.atomic_path = slow  # type: ignore[assignment]
    try:
        data = _images(n=41)  # 41 rows over 2 ranks: unequal shares
        first = teacher_outputs(_teacher(), data, num_classes=4)
        second = teacher_outputs(_teacher(), data, num_classes=4)
        torch.save(
            {"logits": first.logits, "sources": [first.source, second.source]},
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # starts processes
def test_ranks_compute_shares_and_all_hold_the_whole_table(tmp_path: Path) -> None:
    two_ranks(_worker, str(tmp_path))
    expected = teacher_logits_table(_teacher(), _images(n=41))
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["logits"].shape == (41, 4)
        assert torch.allclose(got["logits"], expected, atol=1e-6), rank
        assert got["sources"] == ["computed", "disk"]
    assert len(list((tmp_path / "cache" / "teacher-logits").glob("*.pt"))) == 1


def _machines_worker(rank: int, world: int, port: int, out: str) -> None:
    """Two "machines" with caches of their own: rank 0's holds the table, rank 1's nothing."""
    with gloo_rank(rank, world, port, KDPIPE_CACHE=f"{out}/cache{rank}"):
        t = teacher_outputs(_teacher(), _images(n=41), num_classes=4)
        torch.save({"logits": t.logits, "source": t.source}, Path(out) / f"rank{rank}.pt")


@pytest.mark.slow  # starts processes
def test_rank_0s_stored_table_is_sent_to_ranks_whose_cache_lacks_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only rank 0 stores a table, so with a cache per machine the other ranks never had it:
    # every run computed the table again (all ranks had to hold it to reuse it).
    monkeypatch.setenv("KDPIPE_CACHE", str(tmp_path / "cache0"))
    stored = teacher_outputs(_teacher(), _images(n=41), num_classes=4)
    assert stored.source == "computed"
    two_ranks(_machines_worker, str(tmp_path))
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["source"] == "disk", rank
        assert torch.equal(got["logits"], stored.logits), rank
    assert not (tmp_path / "cache1").exists()
