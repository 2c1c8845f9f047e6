"""Every option is range-checked before any work, with a message naming the option."""

import pytest

from dreamir.cli import main

TRAIN = ["train", "--train", "t.jsonl", "--corpus", "c", "--output-dir", "out"]
HEADS = ["heads", "--calibration", "c.jsonl", "--corpus", "c", "--out", "h.json"]
EVAL = ["eval", "--model", "bm25", "--beir", "b"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*EVAL, "--batch-size", "-1"], "--batch-size must be >= 1, got -1"),
        ([*TRAIN, "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        ([*TRAIN, "--max-steps", "0"], "--max-steps must be >= 1"),
        ([*TRAIN, "--num-heads", "-1"], "--num-heads must be >= 1"),
        ([*TRAIN, "--num-heads", "0"], "--num-heads must be >= 1"),
        ([*TRAIN, "--save-total-limit", "0"], "--save-total-limit must be >= 1"),
        ([*TRAIN, "--save-steps", "-1"], "--save-steps must be >= 1"),
        ([*TRAIN, "--max-target-tokens", "0"], "--max-target-tokens must be >= 1"),
        ([*TRAIN, "--max-document-tokens", "0"], "--max-document-tokens must be >= 1"),
        ([*TRAIN, "--gradient-accumulation-steps", "0"], "--gradient-accumulation-steps must be >= 1"),
        ([*TRAIN, "--num-candidates", "0"], "--num-candidates must be >= 1"),
        ([*TRAIN, "--temperature", "nan"], "--temperature must be a finite number > 0"),
        ([*TRAIN, "--learning-rate", "inf"], "--learning-rate must be a finite number > 0"),
        ([*TRAIN, "--warmup-ratio", "1.5"], "--warmup-ratio must lie between 0 and 1"),
        ([*HEADS, "--top-k", "-2"], "--top-k must be >= 1"),
        ([*HEADS, "--top-k", "0"], "--top-k must be >= 1"),
        (["quickstart", "--threads", "0"], "--threads must be >= 1"),
        (["adapt", "corpus", "--out", "o", "--max-steps", "0"], "--max-steps must be >= 1"),
        (
            ["adapt", "corpus", "--out", "o", "--validation-examples", "0"],
            "--validation-examples must be >= 1",
        ),
    ],
)
def test_out_of_range_options_are_refused_by_name(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_mine_k_is_checked_before_any_work(capsys):
    assert main(["mine", "--train", "t", "--corpus", "c", "--out", "o", "--k", "0"]) == 2
    assert "--k must be >= 1, got 0" in capsys.readouterr().err
