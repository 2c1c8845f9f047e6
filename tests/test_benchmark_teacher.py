"""benchmarks/teacher.py: another judge than SmolLM2 is refused without heads scored on it, before any stage."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_another_llm_without_its_heads_is_refused_by_name_before_any_work(tmp_path):
    work = tmp_path / "work"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "teacher.py"), "--llm", "some/llm", "--work", str(work)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "--llm some/llm: give --heads scored on it" in result.stderr
    assert not work.exists()
