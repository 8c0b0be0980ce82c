"""What an onnxruntime session wants fed: its input's name, element type and declared shape.

kdpipe's own exports name their input `input`; a user's file may say `x`, `input.1`,
`pixel_values`, fix its batch at 1, or take float16. The profiler reads all of it from the
session instead of assuming, and refuses a model it cannot time (several inputs, integer
ids) with one line that says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from kdpipe.core.errors import ConfigError

DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


@dataclass(frozen=True)
class OrtInput:
    name: str
    dtype: type[np.generic]
    # every dim after the batch: an int where fixed, None where symbolic
    dims: tuple[int | None, ...]
    batch: int | None  # the batch size the file fixes, None where it is free

    def array(self, x: np.ndarray) -> np.ndarray:
        return x.astype(self.dtype, copy=False)


def _dim(d: object) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def read_input(session: ort.InferenceSession, where: str) -> OrtInput:
    """The one float input of `session` (loaded from `where`), or a ConfigError saying why not."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise ConfigError(
            f"{where} takes {len(inputs)} inputs ({names}); kdpipe profiles image models "
            "with one input",
            "export the model with a single image input",
        )
    spec = inputs[0]
    if spec.type not in DTYPES:
        raise ConfigError(
            f"{where} takes {spec.type} input '{spec.name}'; kdpipe profiles models fed "
            "float images",
            "profile a model whose input is a float tensor",
        )
    shape = list(spec.shape or [])
    if not shape:
        raise ConfigError(
            f"{where}'s input '{spec.name}' declares no batch dimension",
            "export it with a batch dimension first (N, C, H, W)",
        )
    return OrtInput(spec.name, DTYPES[spec.type], tuple(_dim(d) for d in shape[1:]), _dim(shape[0]))
