"""The dense retriever: an ordinary bi-encoder (HF backbone + pooling + optional L2 norm, optional LoRA).

It knows nothing about LLMs or how it is trained; it saves in the sentence-transformers layout so that
``SentenceTransformer(saved_dir).encode(texts)`` reproduces :meth:`Retriever.encode`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import json
import logging
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from dreamir.io import OutputPathError, atomic_path
from dreamir.models import use_safetensors

logger = logging.getLogger(__name__)

Pooling = Literal["mean", "cls", "last"]

CONFIG_FILE = "dreamir_retriever.json"
# Our pooling names <-> sentence-transformers' pooling mode names.
_POOLING_TO_ST = {"mean": "mean", "cls": "cls", "last": "lasttoken"}
_ST_TO_POOLING = {v: k for k, v in _POOLING_TO_ST.items()}
_ST_LEGACY_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Texts tokenised at once by ``encode`` before length-sorting: big enough to sort well, small enough
# that the Python token lists stay modest for huge corpora.
_ENCODE_CHUNK = 16384
# ``show_progress=None`` shows a bar only above this many batches.
_AUTO_PROGRESS_BATCHES = 5


@dataclass
class LoraSettings:
    """LoRA adapter settings. ``target_modules=None`` means peft's defaults for the architecture."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | Literal["all-linear"] | None = None
    # The adapters' random initialisation has its own seed: drawn from the global generator, it would depend
    # on whatever ran before in the process, and so would every result trained from it.
    init_seed: int = 0


@dataclass
class RetrieverConfig:
    pooling: Pooling = "mean"
    normalize: bool = True
    max_length: int = 256
    query_prefix: str = ""
    document_prefix: str = ""
    lora: LoraSettings | None = None
    # Keep only the first N transformer layers (a cheap raw backbone); None keeps them all.
    num_layers: int | None = None
    # End every text with the tokenizer's end-of-text token, so that last-token pooling reads a state that
    # has seen the whole text rather than its last word (as RepLLaMA does). None: only for "last" pooling
    # (decided when used, so that a config copied with another pooling follows it).
    append_eos: bool | None = None

    @property
    def ends_with_eos(self) -> bool:
        return self.pooling == "last" if self.append_eos is None else self.append_eos

    def __post_init__(self) -> None:
        if self.pooling not in _POOLING_TO_ST:
            raise ValueError(f"pooling must be one of {sorted(_POOLING_TO_ST)}, got {self.pooling!r}")
        if isinstance(self.lora, Mapping):
            self.lora = LoraSettings(**self.lora)
        if self.max_length < 1:
            raise ValueError(f"max_length must be positive, got {self.max_length}")
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"num_layers must be positive, got {self.num_layers}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RetrieverConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            logger.warning("Ignoring unknown RetrieverConfig keys: %s", sorted(unknown))
        return cls(**{k: v for k, v in d.items() if k in known})


def _end_texts_with_eos(tokenizer: PreTrainedTokenizerBase) -> None:
    """Make the tokenizer itself append EOS (within max_length), so that the saved tokenizer does the same
    inside sentence-transformers; a tokenizer that already ends texts with EOS is left alone."""
    if tokenizer("a")["input_ids"][-1] == tokenizer.eos_token_id:
        return
    if hasattr(tokenizer, "add_eos_token"):
        tokenizer.add_eos_token = True
    if tokenizer("a")["input_ids"][-1] != tokenizer.eos_token_id:
        raise ValueError(
            f"append_eos is set but {type(tokenizer).__name__} cannot be made to append its eos token; "
            "pass RetrieverConfig(append_eos=False) (on the command line: --no-append-eos)"
        )


def pool(hidden: Tensor, attention_mask: Tensor, mode: Pooling) -> Tensor:
    """Pool token states [n, t, h] to [n, h] (float32), ignoring padding on either side.

    Index choices mirror sentence-transformers' Pooling so saved models encode identically there.
    """
    hidden = hidden.float()
    mask = attention_mask.to(hidden.device)
    if mode == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    if mode == "cls":
        # First non-padding token (position 0 under right padding).
        idx = mask.to(torch.int32).argmax(dim=1)
    elif mode == "last":
        # Last non-padding token, whichever side the padding is on.
        seq_len = mask.shape[1]
        values, from_end = mask.flip(1).max(dim=1)
        idx = torch.where(values == 0, 0, seq_len - 1 - from_end)
    else:
        raise ValueError(f"unknown pooling {mode!r}")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


class Retriever(torch.nn.Module):
    """Bi-encoder: HF ``AutoModel`` backbone + pooling (+ L2 normalisation), optionally LoRA-wrapped."""

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: RetrieverConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config if config is not None else RetrieverConfig()
        if tokenizer.pad_token is None:
            # Decoder backbones ship without a pad token; eos is the usual stand-in.
            if tokenizer.eos_token is None:
                raise ValueError("tokenizer has neither a pad token nor an eos token to pad with")
            tokenizer.pad_token = tokenizer.eos_token
        # Right padding keeps every real token at its unpadded position (causal models build position ids
        # from 0 regardless of the mask), so embeddings do not depend on what else is in the batch.
        tokenizer.padding_side = "right"
        if self.config.ends_with_eos:
            _end_texts_with_eos(tokenizer)
        self.tokenizer = tokenizer

        base_forward = inspect.signature(backbone.forward).parameters
        self._forward_keys = {"input_ids", "attention_mask", "token_type_ids", "position_ids"} & set(
            base_forward
        )
        self._accepts_use_cache = "use_cache" in base_forward
        hidden_size = getattr(backbone.config.get_text_config(), "hidden_size", None)
        self.embedding_dim = int(hidden_size or backbone.get_input_embeddings().embedding_dim)

        if self.config.lora is not None:
            from peft import LoraConfig, get_peft_model

            lora = self.config.lora
            peft_config = LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules,
            )
            with warnings.catch_warnings():
                # peft probes a deprecated transformers property; nothing for us to act on.
                warnings.filterwarnings(
                    "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
                )
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(lora.init_seed)
                    backbone = get_peft_model(backbone, peft_config)
        self.backbone = backbone

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        path_or_dir: str | Path,
        config: RetrieverConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = torch.float32,
    ) -> Retriever:
        """Load from a local HF model directory or sentence-transformers directory (never the hub).

        With ``config=None`` the settings come from ``dreamir_retriever.json`` if present, else from the
        sentence-transformers files (pooling, normalisation, max_seq_length, prompts), else defaults.
        """
        root = Path(path_or_dir)
        model_dir, _ = _read_sentence_transformers_dir(_local_dir(root))
        config = config if config is not None else cls.read_config(root)
        hf_config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        backbone = _load_backbone(model_dir, hf_config, config.num_layers, dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        if config.max_length > _cap_length(config.max_length, hf_config):
            config = dataclasses.replace(config, max_length=_cap_length(config.max_length, hf_config))
        model = cls(backbone, tokenizer, config)
        return model.to(device)

    @classmethod
    def read_config(cls, path_or_dir: str | Path) -> RetrieverConfig:
        """The settings :meth:`from_pretrained` starts from with ``config=None``, read without loading the
        weights (``max_length`` is capped to the backbone's positions only when the model is loaded)."""
        root = _local_dir(Path(path_or_dir))
        if (root / CONFIG_FILE).is_file():
            return RetrieverConfig.from_dict(json.loads((root / CONFIG_FILE).read_text(encoding="utf-8")))
        return _read_sentence_transformers_dir(root)[1] or RetrieverConfig()

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Retriever:
        """Load a directory written by :meth:`save` (LoRA, if configured, is re-attached fresh)."""
        return cls.from_pretrained(path, device=device)

    # ------------------------------------------------------------------ encoding

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _prefixed(self, texts: Sequence[str], is_query: bool) -> list[str]:
        prefix = self.config.query_prefix if is_query else self.config.document_prefix
        return [prefix + t for t in texts] if prefix else list(texts)

    def tokenize(
        self, texts: Sequence[str], is_query: bool = False, max_length: int | None = None
    ) -> dict[str, Tensor]:
        """Tokenise (with the query or document prefix), padded to the longest, on the model's device;
        ``max_length`` (default: the model's own) can only shorten."""
        enc = self.tokenizer(
            self._prefixed(texts, is_query),
            padding=True,
            truncation=True,
            max_length=min(max_length or self.config.max_length, self.config.max_length),
            return_tensors="pt",
        )
        device = self.device
        return {k: v.to(device) for k, v in enc.items() if k in self._forward_keys}

    def embed(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Embed a pre-tokenised batch (``input_ids``, ``attention_mask``, ...) -> [n, dim] float32."""
        device = self.device
        inputs = {k: v.to(device) for k, v in batch.items() if k in self._forward_keys}
        if self._accepts_use_cache:
            inputs["use_cache"] = False  # no KV cache for a single encoding pass
        hidden = self.backbone(**inputs, return_dict=True).last_hidden_state
        emb = pool(hidden, inputs["attention_mask"], self.config.pooling)
        return F.normalize(emb, p=2, dim=-1) if self.config.normalize else emb

    def forward(self, texts: Sequence[str], is_query: bool, max_length: int | None = None) -> Tensor:
        """Embeddings with autograd, [n, dim] (L2-normalised when ``config.normalize``)."""
        return self.embed(self.tokenize(texts, is_query, max_length))

    @overload
    def encode(
        self,
        texts: Sequence[str] | str,
        is_query: bool = ...,
        batch_size: int = ...,
        show_progress: bool | None = ...,
        convert_to_numpy: Literal[True] = ...,
        max_length: int | None = ...,
    ) -> np.ndarray: ...
    @overload
    def encode(
        self,
        texts: Sequence[str] | str,
        is_query: bool = ...,
        batch_size: int = ...,
        show_progress: bool | None = ...,
        convert_to_numpy: Literal[False] = ...,
        max_length: int | None = ...,
    ) -> Tensor: ...
    def encode(
        self,
        texts: Sequence[str] | str,
        is_query: bool = False,
        batch_size: int = 64,
        show_progress: bool | None = None,
        convert_to_numpy: bool = True,
        max_length: int | None = None,
    ) -> np.ndarray | Tensor:
        """Inference embeddings [n, dim] float32 in input order (a single string gives [dim]).

        ``max_length`` (default: the model's own) can only shorten the texts.

        Texts are sorted by token length (longest first) so each batch pads to a near-equal length.
        """
        single = isinstance(texts, str)
        items = self._prefixed([texts] if single else texts, is_query)
        n = len(items)
        out = torch.empty(n, self.embedding_dim, dtype=torch.float32)
        n_batches = math.ceil(n / batch_size)
        limit = min(max_length or self.config.max_length, self.config.max_length)
        show = n_batches > _AUTO_PROGRESS_BATCHES if show_progress is None else show_progress
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), tqdm(total=n, desc="Encoding", unit="text", disable=not show) as bar:
                for start in range(0, n, _ENCODE_CHUNK):
                    chunk = items[start : start + _ENCODE_CHUNK]
                    enc = self.tokenizer(chunk, truncation=True, max_length=limit)
                    lists = {
                        k: v for k, v in enc.items() if k in self._forward_keys and k != "attention_mask"
                    }
                    ids = lists["input_ids"]
                    order = sorted(range(len(chunk)), key=lambda i: -len(ids[i]))
                    for b in range(0, len(order), batch_size):
                        rows = order[b : b + batch_size]
                        batch = self._pad_rows(lists, rows)
                        out[torch.tensor(rows) + start] = self.embed(batch).float().cpu()
                        bar.update(len(rows))
        finally:
            self.train(was_training)
        if single:
            out = out[0]
        return out.numpy() if convert_to_numpy else out

    def _pad_rows(self, lists: Mapping[str, list[list[int]]], rows: list[int]) -> dict[str, Tensor]:
        """Right-pad the selected token lists to the longest; equal to ``tokenizer(padding=True)``."""
        lengths = [len(lists["input_ids"][i]) for i in rows]
        width = max(lengths)
        pad_values = {
            "input_ids": self.tokenizer.pad_token_id,
            "token_type_ids": self.tokenizer.pad_token_type_id,
        }
        batch = {
            key: torch.tensor([seqs[i] + [pad_values.get(key, 0)] * (width - len(seqs[i])) for i in rows])
            for key, seqs in lists.items()
        }
        batch["attention_mask"] = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
        device = self.device
        return {k: v.to(device) for k, v in batch.items()}

    def encode_queries(self, texts: Sequence[str] | str, **kwargs: Any) -> np.ndarray | Tensor:
        return self.encode(texts, is_query=True, **kwargs)

    def encode_documents(self, texts: Sequence[str] | str, **kwargs: Any) -> np.ndarray | Tensor:
        return self.encode(texts, is_query=False, **kwargs)

    @staticmethod
    def similarity(q: np.ndarray | Tensor, d: np.ndarray | Tensor) -> np.ndarray | Tensor:
        """Cosine similarity [m, n] (dot product of L2-normalised rows)."""
        if isinstance(q, Tensor) and isinstance(d, Tensor):
            return F.normalize(q.float(), dim=-1) @ F.normalize(d.float(), dim=-1).T
        qa = np.asarray(q, dtype=np.float32)
        da = np.asarray(d, dtype=np.float32)
        qa = qa / np.maximum(np.linalg.norm(qa, axis=-1, keepdims=True), 1e-12)
        da = da / np.maximum(np.linalg.norm(da, axis=-1, keepdims=True), 1e-12)
        return qa @ da.T

    # ------------------------------------------------------------------ training helpers

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters that require grad (only the LoRA ones when LoRA is on)."""
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def is_lora(self) -> bool:
        return self.config.lora is not None

    # ------------------------------------------------------------------ saving

    def merged_backbone(self) -> PreTrainedModel:
        """The backbone with LoRA merged in, as a copy; the live (trainable) module is left untouched."""
        if not self.is_lora:
            return self.backbone
        return copy.deepcopy(self.backbone).merge_and_unload()

    def save(self, path: str | Path) -> Path:
        """Write a sentence-transformers directory (LoRA merged) plus ``dreamir_retriever.json``, atomically."""
        path = Path(path)
        cfg = self.config
        # Replace only an earlier save (or an empty directory), never a directory of the user's own.
        earlier_save = path.is_dir() and ((path / CONFIG_FILE).is_file() or not any(path.iterdir()))
        if path.is_dir() and not earlier_save:
            raise OutputPathError(
                path, f"is an existing directory without {CONFIG_FILE}; refusing to replace it with a model"
            )
        with atomic_path(path, replace_directory=earlier_save) as tmp:
            tmp.mkdir()
            backbone = self.merged_backbone()
            backbone.save_pretrained(tmp, safe_serialization=True)
            old_max = self.tokenizer.model_max_length
            try:
                # So that plain HF / ST loaders truncate where we do.
                self.tokenizer.model_max_length = cfg.max_length
                self.tokenizer.save_pretrained(tmp)
            finally:
                self.tokenizer.model_max_length = old_max

            modules = [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
            if cfg.normalize:
                modules.append(
                    {
                        "idx": 2,
                        "name": "2",
                        "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize",
                    }
                )
            _write_json(tmp / "modules.json", modules)
            _write_json(
                tmp / "sentence_bert_config.json", {"max_seq_length": cfg.max_length, "do_lower_case": False}
            )
            st_mode = _POOLING_TO_ST[cfg.pooling]
            pooling_cfg: dict[str, Any] = {"word_embedding_dimension": self.embedding_dim}
            pooling_cfg.update({flag: mode == st_mode for flag, mode in _ST_LEGACY_FLAGS.items()})
            pooling_cfg["include_prompt"] = True
            (tmp / "1_Pooling").mkdir()
            _write_json(tmp / "1_Pooling" / "config.json", pooling_cfg)
            if cfg.normalize:
                (tmp / "2_Normalize").mkdir()
                _write_json(
                    tmp / "2_Normalize" / "config.json",
                    {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"},
                )
            prompts = {k: v for k, v in (("query", cfg.query_prefix), ("document", cfg.document_prefix)) if v}
            _write_json(
                tmp / "config_sentence_transformers.json",
                {
                    "__version__": _versions(),
                    "model_type": "SentenceTransformer",
                    "prompts": prompts,
                    # ST's plain encode() then adds the document prefix, as Retriever.encode does.
                    "default_prompt_name": "document" if cfg.document_prefix else None,
                    "similarity_fn_name": "cosine",
                },
            )
            _write_json(tmp / CONFIG_FILE, cfg.to_dict())
        return path


# ---------------------------------------------------------------------- helpers


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _versions() -> dict[str, str]:
    import transformers

    versions = {"transformers": transformers.__version__, "pytorch": torch.__version__}
    try:
        from importlib.metadata import version

        versions["sentence_transformers"] = version("sentence-transformers")
    except Exception:  # metadata missing: the version is informative only
        pass
    return versions


def _cap_length(max_length: int, hf_config: Any) -> int:
    """Never ask for more positions than a learned position table has."""
    limit = getattr(hf_config, "max_position_embeddings", None)
    return min(max_length, limit) if isinstance(limit, int) and limit > 0 else max_length


# Checkpoint parts an AutoModel backbone legitimately leaves behind (LM/MLM/classifier heads) or lacks
# (BERT's pooler, which no pooling mode here reads).
_EXPECTED_UNUSED = re.compile(r"^(lm_head|cls|score|classifier|pre_classifier|qa_outputs)\.")
_EXPECTED_MISSING = re.compile(r"(^|\.)pooler\.")


def _load_backbone(model_dir: Path, hf_config: Any, num_layers: int | None, dtype: torch.dtype | None) -> Any:
    """``AutoModel.from_pretrained``; with ``num_layers`` below the depth, build and load only those layers.

    transformers' load report is replaced by a warning about unexpected problems only, so that the
    expected leftovers (an LLM's lm_head, the weights of cut layers) do not drown real ones.
    """
    total = getattr(hf_config, "num_hidden_layers", None)
    dropped: re.Pattern[str] | None = None
    if num_layers is not None and num_layers != total:
        if not isinstance(total, int):
            name = type(hf_config).__name__
            raise ValueError(f"cannot cut {name} to {num_layers} layers: it has no num_hidden_layers")
        if num_layers > total:
            raise ValueError(f"num_layers={num_layers} exceeds the backbone's {total} layers")
        hf_config.num_hidden_layers = num_layers
        layer_types = getattr(hf_config, "layer_types", None)
        if isinstance(layer_types, list):
            hf_config.layer_types = layer_types[:num_layers]
        dropped_ids = "|".join(str(i) for i in range(num_layers, total))
        dropped = re.compile(rf"(^|\.)(layers?|h|blocks?)\.({dropped_ids})\.")
    load = functools.partial(
        AutoModel.from_pretrained,
        model_dir,
        config=hf_config,
        dtype=dtype,
        local_files_only=True,
        output_loading_info=True,
        use_safetensors=use_safetensors(model_dir),
    )
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        backbone, info = load()
    except Exception:
        # A hard failure (e.g. size mismatch) points at transformers' report: load again to show it.
        hf_logging.set_verbosity(verbosity)
        load()
        raise
    finally:
        hf_logging.set_verbosity(verbosity)
    unexpected = [
        k
        for k in info.get("unexpected_keys", [])
        if not _EXPECTED_UNUSED.search(k) and not (dropped and dropped.search(k))
    ]
    missing = [k for k in info.get("missing_keys", []) if not _EXPECTED_MISSING.search(k)]
    if missing or unexpected:
        logger.warning(
            "Loading %s: weights missing from the checkpoint (randomly initialised): %s; "
            "checkpoint weights left unused: %s",
            model_dir,
            sorted(missing),
            sorted(unexpected),
        )
    return backbone


def _local_dir(root: Path) -> Path:
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a local model directory")
    return root


def _read_sentence_transformers_dir(root: Path) -> tuple[Path, RetrieverConfig | None]:
    """Return (backbone dir, config implied by the ST files) — (root, None) for a plain HF directory."""
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        return root, None
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    model_dir = root
    pooling: Pooling | None = None
    normalize = False
    for module in modules:
        kind = module["type"].rsplit(".", 1)[-1]
        module_dir = root / module.get("path", "")
        if kind == "Transformer":
            model_dir = module_dir
        elif kind == "Pooling":
            pooling = _read_st_pooling(module_dir / "config.json")
        elif kind == "Normalize":
            normalize = True
        else:
            raise ValueError(f"unsupported sentence-transformers module {module['type']!r} in {root}")

    st_cfg_file = model_dir / "sentence_bert_config.json"
    st_cfg = json.loads(st_cfg_file.read_text(encoding="utf-8")) if st_cfg_file.is_file() else {}
    if st_cfg.get("do_lower_case"):
        logger.warning("%s sets do_lower_case, which Retriever does not apply", root)
    max_length = st_cfg.get("max_seq_length")
    if max_length is None:
        # Newer ST versions keep the limit only in the tokenizer (capped by the position table).
        tok_cfg_file = model_dir / "tokenizer_config.json"
        tok_cfg = json.loads(tok_cfg_file.read_text(encoding="utf-8")) if tok_cfg_file.is_file() else {}
        max_length = tok_cfg.get("model_max_length") or RetrieverConfig.max_length
        hf_cfg = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        max_length = _cap_length(int(min(max_length, 10**9)), hf_cfg)

    prompts: dict[str, str] = {}
    prompts_file = root / "config_sentence_transformers.json"
    if prompts_file.is_file():
        prompts = json.loads(prompts_file.read_text(encoding="utf-8")).get("prompts") or {}
    document_prefix = next((prompts[k] for k in ("document", "passage", "corpus") if prompts.get(k)), "")
    pooling = pooling or "mean"
    config = RetrieverConfig(
        pooling=pooling,
        normalize=normalize,
        max_length=int(max_length),
        query_prefix=prompts.get("query") or "",
        document_prefix=document_prefix,
        # A last-token model encodes as sentence-transformers would: its tokenizer decides about EOS. Other
        # poolings keep the default, so that a copy switched to "last" gets the EOS that pooling needs.
        append_eos=False if pooling == "last" else None,
    )
    return model_dir, config


def _read_st_pooling(config_file: Path) -> Pooling:
    cfg = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    if "pooling_mode" in cfg:
        modes = cfg["pooling_mode"]
        modes = [modes] if isinstance(modes, str) else list(modes)
    else:
        modes = [mode for flag, mode in _ST_LEGACY_FLAGS.items() if cfg.get(flag)] or ["mean"]
    if len(modes) != 1 or modes[0] not in _ST_TO_POOLING:
        raise ValueError(f"unsupported sentence-transformers pooling {modes} in {config_file}")
    if cfg.get("include_prompt") is False:
        raise ValueError(f"include_prompt=False pooling is not supported ({config_file})")
    return _ST_TO_POOLING[modes[0]]
