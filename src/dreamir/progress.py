"""Progress reporting that suits where the output goes.

On a terminal: tqdm bars. In a log file or pipe: plain lines (``encoding: 1200/5183 (23%), 41.2 text/s``)
at most every ``LOG_INTERVAL`` seconds, instead of thousands of carriage-return updates. With progress
turned off (``--no-show-progress``): nothing, including the bars of transformers ("Loading weights") and
huggingface_hub.

:func:`configure_progress` sets this for the whole process, for dreamir's bars and third-party ones alike:
tqdm is the one place every bar passes through, so its constructor applies the policy.
"""

from __future__ import annotations

import functools
import sys
from typing import IO, Any

import tqdm.std

# Seconds between two progress lines in a log.
LOG_INTERVAL = 30.0

# A log line: no bar, just the counts ("{total_fmt}" is "?" when the total is unknown).
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

_policy = {"show": True, "interval": LOG_INTERVAL}


class LineWriter:
    """A stream for tqdm that turns its carriage-return redraws into whole lines."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line and line != self._last:  # closing a bar redraws its last state: write it once
            self.stream.write(line + "\n")
            self._last = line

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _apply_policy(kwargs: dict[str, Any]) -> dict[str, Any]:
    """tqdm keyword arguments under the process's policy (called for every bar)."""
    if not _policy["show"]:
        return {**kwargs, "disable": True}
    stream = kwargs.get("file") or sys.stderr
    if isinstance(stream, LineWriter) or _is_terminal(stream):
        return kwargs
    # Not a terminal: periodic lines. tqdm disables itself on a non-terminal only when disable=None.
    disable = kwargs.get("disable")
    return {
        **kwargs,
        "disable": bool(disable),
        "file": LineWriter(stream),
        "mininterval": max(float(kwargs.get("mininterval") or 0.0), _policy["interval"]),
        "maxinterval": max(float(kwargs.get("maxinterval") or 0.0), _policy["interval"]),
        "bar_format": LOG_FORMAT,
    }


_original_init = tqdm.std.tqdm.__init__


@functools.wraps(_original_init)
def _init_with_policy(self: tqdm.std.tqdm, *args: Any, **kwargs: Any) -> None:
    _original_init(self, *args, **_apply_policy(kwargs))


def configure_progress(show: bool = True, interval: float = LOG_INTERVAL) -> None:
    """Set the process's progress policy: ``show=False`` silences every bar (ours, transformers',
    huggingface_hub's); otherwise bars on a terminal and periodic lines (every ``interval`` s) elsewhere."""
    _policy.update(show=show, interval=interval)
    tqdm.std.tqdm.__init__ = _init_with_policy  # type: ignore[method-assign]
    from transformers.utils import logging as hf_logging

    if show:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    except ImportError:  # an older huggingface_hub: its bars go through tqdm anyway
        return
    if show:
        enable_progress_bars()
    else:
        disable_progress_bars()


def progress(
    iterable: Any = None, *, total: int | None = None, desc: str = "", unit: str = "it", show: bool = True
):
    """A tqdm bar under the process's policy; ``show=False`` turns this one off whatever the policy."""
    return tqdm.std.tqdm(iterable, total=total, desc=desc, unit=unit, disable=not show)
