"""Cached stages for the orchestrators (quickstart, adapt, the benchmarks): a stage is named by the file or
directory it produces, skipped when that output exists, and timed when it runs. Each producer writes its
output atomically, so an interrupted run leaves no half-written output and simply resumes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dreamir.io import write_json_atomic


class Stages:
    """Runs stages; ``seconds`` holds how long each took in this run (and, with ``seconds_file``, in the
    earlier runs of the same work directory too)."""

    def __init__(self, say: Callable[[str], None] | None = None, seconds_file: Path | None = None) -> None:
        self.say = say
        self.seconds_file = seconds_file
        self.seconds: dict[str, float] = {}
        if seconds_file is not None and seconds_file.exists():
            self.seconds = json.loads(seconds_file.read_text(encoding="utf-8"))

    def run(self, name: str, output: Path, produce: Callable[[], Any], message: str | None = None) -> Path:
        """``produce()`` unless ``output`` exists (it must create ``output``); returns ``output``."""
        if not Path(output).exists():
            self.timed(name, produce, message)
        return Path(output)

    def json(self, name: str, output: Path, compute: Callable[[], Any], message: str | None = None) -> Any:
        """The JSON stored at ``output``, computed (and stored atomically) the first time."""
        self.run(name, output, lambda: write_json_atomic(output, compute()), message)
        return json.loads(Path(output).read_text(encoding="utf-8"))

    def timed(self, name: str, work: Callable[[], Any], message: str | None = None) -> Any:
        """Run ``work`` whatever exists (it resumes on its own, as training does), adding its time."""
        if message and self.say:
            self.say(message)
        started = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - started
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        if self.say:
            self.say(f"stage {name}: {seconds:.0f} s")
        if self.seconds_file is not None:
            write_json_atomic(self.seconds_file, self.seconds)
        return result
