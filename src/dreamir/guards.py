"""Guards that keep a broken run from looking like a good one: non-finite losses, gradients, weights and
embeddings are caught where they appear, with a message saying what to change."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
import torch

logger = logging.getLogger(__name__)

HINT = "lower --learning-rate, raise --temperature, or check the training data"


class NonFiniteError(ValueError):
    """A loss, gradient, weight or embedding that is NaN or infinite where it must not be."""


class NonFiniteStepGuard:
    """Decides, step by step, whether an optimiser step may be applied.

    A step whose loss or gradient norm is NaN or infinite is skipped (the caller must not apply it) and
    counted; ``max_consecutive`` skipped steps in a row stop training, since the run is not recovering.
    An exactly zero gradient is applied but warned about once: it means the loss cannot teach anything.
    """

    def __init__(self, max_consecutive: int) -> None:
        self.max_consecutive = max_consecutive
        self.skipped: list[int] = []
        self.consecutive = 0
        self.zero_gradient_steps = 0

    def allows(self, step: int, loss: float, grad_norm: float) -> bool:
        """``step`` is 1-based. Raises NonFiniteError when too many steps in a row were not finite."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.consecutive = 0
            if grad_norm == 0.0:
                self._note_zero_gradient(step)
            return True
        self.skipped.append(step)
        self.consecutive += 1
        logger.warning(
            "step %d skipped: loss %s, gradient norm %s (not finite); %d skipped so far",
            step,
            loss,
            grad_norm,
            len(self.skipped),
        )
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"training stopped at step {step}: the loss or gradient was NaN or infinite in "
                f"{self.consecutive} steps in a row (steps {self.skipped[-self.consecutive :]}); no weights "
                f"from these steps were saved. {HINT}"
            )
        return False

    def _note_zero_gradient(self, step: int) -> None:
        self.zero_gradient_steps += 1
        if self.zero_gradient_steps == 1:
            logger.warning(
                "step %d: the gradient is exactly zero, so this step changes nothing (a temperature so small "
                "that the softmax saturates, or training rows with a single candidate?)",
                step,
            )


def check_finite_parameters(named: Iterable[tuple[str, torch.Tensor]], what: str) -> None:
    """Refuse to save weights that are NaN or infinite: a saved model must never be a broken one."""
    bad = [name for name, value in named if not torch.isfinite(value).all()]
    if bad:
        raise NonFiniteError(
            f"{what}: {len(bad)} parameter tensors hold NaN or infinite values (first: {bad[0]}); "
            f"not saved. {HINT}"
        )


def check_finite_embeddings(embeddings: np.ndarray, what: str) -> np.ndarray:
    """Refuse embeddings with NaN or infinite values: ranking by them gives meaningless scores."""
    rows = ~np.isfinite(np.asarray(embeddings)).reshape(len(embeddings), -1).all(axis=1)
    if rows.any():
        raise NonFiniteError(
            f"{what}: {int(rows.sum())} of {len(embeddings)} embeddings hold NaN or infinite values; "
            "the model's weights are broken (a diverged training run?)"
        )
    return embeddings
