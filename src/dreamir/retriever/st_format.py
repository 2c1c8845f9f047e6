"""The sentence-transformers directory format: reading the settings a directory implies, and writing one
with sentence-transformers' own modules and ``save``, so that ``SentenceTransformer(dir)`` encodes as the
retriever does (LoRA merged first; a cut backbone is saved with its cut config; last-token pooling with a
tokenizer that appends EOS itself).

Reading does not go through ``SentenceTransformer(dir)``, for three reasons: the settings must be known
before any weight is loaded (the command line overrides them, and ``num_layers`` cuts the backbone before
its layers are built); plain Hugging Face directories, which sentence-transformers would wrap in a default
mean pooling, must load through the same path; and weights load through
:func:`dreamir.retriever.backbone.load_backbone`, safetensors only and quiet about expected leftovers.
The Pooling module's file is read with sentence-transformers' own reader.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from dreamir.data.errors import read_json_file
from dreamir.retriever.backbone import cap_length
from dreamir.retriever.config import Pooling, RetrieverConfig
from dreamir.similarity import SIMILARITIES

logger = logging.getLogger(__name__)

# Our pooling names <-> sentence-transformers' pooling mode names.
_POOLING_TO_ST: dict[str, str] = {"mean": "mean", "cls": "cls", "last": "lasttoken"}
_ST_TO_POOLING: dict[str, Pooling] = {"mean": "mean", "cls": "cls", "lasttoken": "last"}
_MODEL_CONFIG_FILE = "config_sentence_transformers.json"
# Compress pooling has no sentence-transformers equivalent: its module's file travels with the model.
_COMPRESS_MODULE = "compress_pooling.CompressTokenPooling"
_TEXT_ONLY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}


def local_dir(path: str | Path) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a local model directory")
    return root


def read_directory(root: Path) -> tuple[Path, RetrieverConfig | None]:
    """Return (backbone dir, config implied by the ST files) — (root, None) for a plain HF directory."""
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        return root, None
    modules = read_json_file(modules_file, list)
    model_dir = root
    pooling: Pooling | None = None
    compress_tokens = RetrieverConfig.compress_tokens
    normalize = False
    for module in modules:
        kind = module["type"].rsplit(".", 1)[-1]
        module_dir = root / module.get("path", "")
        if kind == "Transformer":
            model_dir = module_dir
        elif kind == "Pooling":
            pooling = _read_pooling(module_dir)
        elif kind == "Normalize":
            normalize = True
        elif module["type"] == _COMPRESS_MODULE:
            pooling = "compress"
            compress_config = read_json_file(module_dir / "config.json")
            compress_tokens = int(compress_config["compress_tokens"])
        else:
            raise ValueError(f"unsupported sentence-transformers module {module['type']!r} in {root}")

    st_cfg_file = model_dir / "sentence_bert_config.json"
    st_cfg = read_json_file(st_cfg_file) if st_cfg_file.is_file() else {}
    if st_cfg.get("do_lower_case"):
        logger.warning("%s sets do_lower_case, which Retriever does not apply", root)
    max_length = st_cfg.get("max_seq_length")
    if max_length is None:
        # Newer ST versions keep the limit only in the tokenizer (capped by the position table).
        tok_cfg_file = model_dir / "tokenizer_config.json"
        tok_cfg = read_json_file(tok_cfg_file) if tok_cfg_file.is_file() else {}
        max_length = tok_cfg.get("model_max_length") or RetrieverConfig.max_length
        hf_cfg = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        max_length = cap_length(int(min(max_length, 10**9)), hf_cfg)

    model_cfg_file = root / _MODEL_CONFIG_FILE
    model_cfg = read_json_file(model_cfg_file) if model_cfg_file.is_file() else {}
    prompts: dict[str, str] = model_cfg.get("prompts") or {}
    # sentence-transformers' own default when a directory names none.
    similarity = model_cfg.get("similarity_fn_name") or "cosine"
    if similarity not in SIMILARITIES:
        raise ValueError(
            f"{model_cfg_file}: similarity_fn_name {similarity!r} is not supported (only {list(SIMILARITIES)})"
        )
    document_prefix = next((prompts[k] for k in ("document", "passage", "corpus") if prompts.get(k)), "")
    pooling = pooling or "mean"
    config = RetrieverConfig(
        pooling=pooling,
        normalize=normalize,
        similarity=similarity,
        max_length=int(max_length),
        query_prefix=prompts.get("query") or "",
        document_prefix=document_prefix,
        compress_tokens=compress_tokens,
        # A last-token model encodes as sentence-transformers would: its tokenizer decides about EOS. Other
        # poolings keep the default, so that a copy switched to "last" gets the EOS that pooling needs.
        append_eos=False if pooling == "last" else None,
    )
    return model_dir, config


def _read_pooling(module_dir: Path) -> Pooling:
    from sentence_transformers.sentence_transformer.modules import Pooling as StPooling

    # sentence-transformers' own reader, which also understands the older per-mode flags.
    cfg: dict[str, Any] = (
        StPooling.load_config(str(module_dir)) if (module_dir / "config.json").is_file() else {}
    )
    modes = cfg.get("pooling_mode", "mean")
    modes = [modes] if isinstance(modes, str) else list(modes)
    if len(modes) != 1 or modes[0] not in _ST_TO_POOLING:
        raise ValueError(f"unsupported sentence-transformers pooling {modes} in {module_dir / 'config.json'}")
    if cfg.get("include_prompt") is False:
        raise ValueError(f"include_prompt=False pooling is not supported ({module_dir / 'config.json'})")
    return _ST_TO_POOLING[modes[0]]


def write_directory(
    out: Path,
    backbone: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: RetrieverConfig,
    embedding_dim: int,
) -> None:
    """Write the sentence-transformers directory ``out`` (new or empty) for ``backbone`` (LoRA merged)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling as StPooling

    out.mkdir(exist_ok=True)
    old_max = tokenizer.model_max_length
    try:
        # So that plain HF / ST loaders truncate where we do.
        tokenizer.model_max_length = config.max_length
        tokenizer.save_pretrained(out)
    finally:
        tokenizer.model_max_length = old_max
    # sentence-transformers builds its Transformer module from a directory: the backbone's files give it
    # the architecture, on the meta device (no weight is read); the module then holds the live backbone,
    # whose weights its save writes again (the price of saving through sentence-transformers).
    backbone.save_pretrained(out, safe_serialization=True)
    transformer = Transformer(
        str(out),
        max_seq_length=config.max_length,
        model_kwargs={"device_map": "meta"},
        # Texts only: a tokenizer with a chat template would otherwise have sentence-transformers wrap plain
        # texts in it, which the retriever never does.
        modality_config=_TEXT_ONLY,
        module_output_name="token_embeddings",
    )
    transformer.model = backbone
    if config.pooling == "compress":
        from dreamir.retriever import compress_pooling

        shutil.copyfile(compress_pooling.__file__, out / "compress_pooling.py")
        pooling = compress_pooling.CompressTokenPooling(embedding_dim, config.compress_tokens)
    else:
        pooling = StPooling(embedding_dim, _POOLING_TO_ST[config.pooling])
    modules = [transformer, pooling]
    if config.normalize:
        modules.append(Normalize())
    model = SentenceTransformer(
        modules=modules,
        device=str(backbone.device),
        prompts={
            k: v for k, v in (("query", config.query_prefix), ("document", config.document_prefix)) if v
        },
        # ST's plain encode() then adds the document prefix, as Retriever.encode does.
        default_prompt_name="document" if config.document_prefix else None,
        similarity_fn_name=config.similarity,
    )
    model.save(str(out), create_model_card=False)
    if config.pooling == "compress":
        _refer_to_own_file(out / "modules.json")


def _refer_to_own_file(modules_file: Path) -> None:
    """Point the compress pooling entry at the directory's own copy of its file (sentence-transformers
    imports it from there when trust_remote_code is on), not at dreamir's module."""
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    for module in modules:
        if module["type"].endswith(".CompressTokenPooling"):
            module["type"] = _COMPRESS_MODULE
    modules_file.write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
