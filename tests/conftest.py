import os
from pathlib import Path

# Tests never reach the hub; anything that tries fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# "auto" precision means float32 in the tests whatever the processor, so no result depends on its kind;
# tests/test_precision.py checks what auto means on each kind, and the bf16 path where it is native.
os.environ.setdefault("DREAMIR_AUTO_PRECISION", "float32")

import pytest
import torch

from tests.tiny_models import make_tiny_bert, make_tiny_llama

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    return str(
        make_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), num_layers=2, num_heads=4, num_kv_heads=2)
    )


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> str:
    return str(make_tiny_bert(tmp_path_factory.mktemp("tiny_bert")))


# shared/ lies beside the repository (here and in CI).
SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "beir" / "scifact"


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    if not SCIFACT.is_dir():
        pytest.skip(f"SciFact not present at {SCIFACT}")
    return SCIFACT
