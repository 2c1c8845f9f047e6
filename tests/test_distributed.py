"""Training on two CPU processes (gloo), as `accelerate launch --num_processes 2` runs it: each process
takes half of every step's batch, so two processes with batch B take the optimiser step one process with
batch 2B takes, and a killed two-process run resumes exactly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(processes: int, *argv: object) -> list[int]:
    """Start ``processes`` workers joined in one process group; their exit codes."""
    port = _free_port()
    base = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "OMP_NUM_THREADS": "1",
    }
    workers = []
    for rank in range(processes):
        env = dict(base)
        if processes > 1:
            env |= {
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(processes),
                "LOCAL_WORLD_SIZE": str(processes),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            }
        command = [sys.executable, "-m", "tests.distributed_worker", *map(str, argv)]
        workers.append(subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True))
    codes = []
    for worker in workers:
        _, error = worker.communicate(timeout=600)
        codes.append(worker.returncode)
        if worker.returncode not in (0, 3, 4):
            pytest.fail(f"worker failed ({worker.returncode}):\n{error[-3000:]}")
    return codes


def _weights(run: Path) -> dict:
    return load_file(run / "final" / "model.safetensors")


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _assert_close(a: dict, b: dict, atol: float) -> None:
    import torch

    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


# dream-uneven: targets of unequal lengths, so the processes' means cover unequal token counts;
# dream-batch: in-batch candidates, whose pool holds every process's candidates; dream-proximal: a mean of
# per-query KL terms, each process's share of it (dream-uniform likewise, towards the judgement at uniform p).
@pytest.mark.parametrize(
    "objective", ["infonce", "dream", "dream-uneven", "dream-batch", "dream-proximal", "dream-uniform"]
)
def test_two_processes_with_batch_b_step_like_one_process_with_batch_2b(
    objective, tmp_path, tiny_bert_dir, tiny_llama_dir
):
    models = (tiny_bert_dir, tiny_llama_dir)
    assert _run(1, objective, *models, tmp_path / "one", 4, 2) == [0]
    assert _run(2, objective, *models, tmp_path / "two", 2, 2) == [0, 0]
    one, two = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in one], rel=1e-3)
    if objective in ("infonce", "dream-batch"):
        # In-batch candidates are gathered: both see the pool one process with the whole batch builds.
        assert [r["pool_size"] for r in two] == [r["pool_size"] for r in one]
    before = load_file(Path(tiny_bert_dir) / "model.safetensors")
    after = _weights(tmp_path / "one")
    assert any((before[n] - after[n]).abs().max() > 1e-4 for n in after if n in before)  # training moved them
    _assert_close(_weights(tmp_path / "two"), after, atol=2e-5)


def test_a_killed_two_process_run_resumes_exactly(tmp_path, tiny_bert_dir, tiny_llama_dir):
    models = (tiny_bert_dir, tiny_llama_dir)
    assert _run(2, "infonce", *models, tmp_path / "whole", 2, 4) == [0, 0]
    assert _run(2, "infonce", *models, tmp_path / "split", 2, 4, 4) == [3, 3]  # killed in step 4
    assert not (tmp_path / "split" / "final").exists()
    assert _run(2, "infonce", *models, tmp_path / "split", 2, 4) == [0, 0]
    assert [r["step"] for r in _log(tmp_path / "split")] == [1, 2, 3, 4]
    assert [r["loss"] for r in _log(tmp_path / "split")] == [r["loss"] for r in _log(tmp_path / "whole")]
    _assert_close(_weights(tmp_path / "split"), _weights(tmp_path / "whole"), atol=0)
    # Another process count gives every process other examples: its checkpoint refuses to be resumed so.
    assert _run(1, "infonce", *models, tmp_path / "split", 2, 4) == [4]
