"""Range checks for the settings dataclasses, run when they are built (so the CLI rejects a bad option
before any work, with a message naming the option as it is typed: ``--batch-size must be >= 1, got 0``)."""

from __future__ import annotations

import math
from typing import Any


class OptionError(ValueError):
    """A setting outside its valid range."""

    def __init__(self, name: str, reason: str, value: Any) -> None:
        self.option = "--" + name.replace("_", "-")
        super().__init__(f"{self.option} {reason}, got {value!r}")


def _values(settings: object, names: tuple[str, ...]):
    for name in names:
        value = getattr(settings, name)
        if value is not None:  # None means "the default" wherever a setting is optional
            yield name, value


def at_least(settings: object, minimum: int, *names: str) -> None:
    """Whole-number settings that must be >= ``minimum``."""
    for name, value in _values(settings, names):
        if not value >= minimum:
            raise OptionError(name, f"must be >= {minimum}", value)


def positive(settings: object, *names: str) -> None:
    """Real settings that must be finite and > 0 (NaN fails every comparison, so check it by name)."""
    for name, value in _values(settings, names):
        if not (math.isfinite(value) and value > 0):
            raise OptionError(name, "must be a finite number > 0", value)


def non_negative(settings: object, *names: str) -> None:
    for name, value in _values(settings, names):
        if not (math.isfinite(value) and value >= 0):
            raise OptionError(name, "must be a finite number >= 0", value)


def fraction(settings: object, *names: str) -> None:
    """Settings that must lie in [0, 1]."""
    for name, value in _values(settings, names):
        if not 0 <= value <= 1:
            raise OptionError(name, "must lie between 0 and 1", value)


def split_template(template: str, option: str) -> tuple[str, str]:
    """A template such as ``'{text}\\nThis sentence means in one word: "'`` as (prefix, suffix)."""
    if template.count("{text}") != 1:
        raise ValueError(f"{option} must contain {{text}} exactly once, got {template!r}")
    prefix, suffix = template.split("{text}")
    return prefix, suffix


def gigabytes(value: float | None) -> int | None:
    """A size option given in GB (10^9 bytes), in bytes; None stays None (no bound)."""
    return None if value is None else int(value * 1e9)
