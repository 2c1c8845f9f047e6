"""Float comparisons that hold on every processor: a tolerance relative to the size of the values compared.

An absolute tolerance on values whose size is not bounded near 1 (unnormalised embeddings, dot products,
summed log-likelihoods) fails wherever the last bits of a float32 sum differ, e.g. between vector
instruction sets. Here the tolerance scales with the largest magnitude among the expected values, so a
value near zero inside a vector is held to the vector's scale, not to its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_float64(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def assert_close_to_scale(actual: Any, expected: Any, rtol: float = 1e-5, err_msg: str = "") -> None:
    """``actual`` equals ``expected`` within ``rtol`` of the expected values' largest magnitude."""
    got, want = as_float64(actual), as_float64(expected)
    scale = float(np.abs(want).max()) if want.size else 0.0
    np.testing.assert_allclose(
        got, want, rtol=rtol, atol=rtol * max(scale, np.finfo(np.float32).tiny), err_msg=err_msg
    )
