"""Progress: bars on a terminal, plain lines in a log, nothing with --no-show-progress (third-party bars too)."""

from __future__ import annotations

import io

import pytest
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from dreamir.progress import LineWriter, configure_progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_policy():
    yield
    configure_progress(True)


def test_a_log_gets_whole_lines_without_carriage_returns():
    configure_progress(True, interval=0.0)
    log = io.StringIO()
    for _ in tqdm(range(50), desc="encoding", file=log, disable=False):
        pass
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[-1].startswith("encoding: 50/50")
    assert len(lines) == len(set(lines))  # the final state is written once


def test_a_log_gets_a_line_per_interval_not_per_update():
    configure_progress(True, interval=3600.0)
    log = io.StringIO()
    for _ in tqdm(range(10_000), desc="many", file=log):
        pass
    assert len(log.getvalue().splitlines()) <= 2  # the start and the end


def test_a_terminal_keeps_its_bar():
    configure_progress(True)
    terminal = FakeTerminal()
    for _ in tqdm(range(5), desc="bar", file=terminal, disable=False):
        pass
    assert "\r" in terminal.getvalue() and "|" in terminal.getvalue()


def test_no_show_progress_silences_every_bar_including_transformers():
    configure_progress(False)
    terminal = FakeTerminal()
    for _ in tqdm(range(5), desc="bar", file=terminal, disable=False):  # a caller asking for a bar
        pass
    assert terminal.getvalue() == ""
    assert not hf_logging.is_progress_bar_enabled()  # the "Loading weights" bar
    configure_progress(True)
    assert hf_logging.is_progress_bar_enabled()


def test_line_writer_skips_blank_writes():
    out = io.StringIO()
    writer = LineWriter(out)
    writer.write("\r")
    writer.write("\rstep: 1/2   ")
    writer.write("\n")
    assert out.getvalue() == "step: 1/2\n"


def test_no_show_progress_on_the_command_line_hides_the_loading_weights_bar(tmp_path, tiny_bert_dir, capfd):
    from dreamir.cli import main
    from tests.tiny_beir import make_tiny_beir

    beir = make_tiny_beir(tmp_path / "beir")
    assert main(["index", tiny_bert_dir, str(beir), "--out", str(tmp_path / "i1"), "--no-show-progress"]) == 0
    quiet = capfd.readouterr().err
    assert "Loading weights" not in quiet and "Encoding" not in quiet
    assert main(["index", tiny_bert_dir, str(beir), "--out", str(tmp_path / "i2")]) == 0
    logged = capfd.readouterr().err  # not a terminal: whole lines
    assert "Loading weights" in logged and "\r" not in logged
