"""Per-corpus cache of candidate documents' keys and values for the parallel layout.

In the parallel layout a candidate's keys and values (every layer) depend only on the frozen LLM, the
instruction prefix and the candidate's own tokens, so they are computed once and reused at every step,
epoch and objective. An entry is keyed by a SHA-256 of the model's fingerprint (config and a sample of
every weight), the storage dtype, the prefix's token ids and the document's token ids: a cache built for
another model, other prompt settings (instruction, truncation, formatting) or an edited text has other
keys, so it is never read, and the entry is built anew. Every shard records the fingerprint it was built
with and is skipped when it differs.

Entries live in memory (an LRU bounded in bytes) and, with a directory, on disk as safetensors shards (one
per build, written atomically, memory-mapped when read). Several processes may share a directory. With
``max_disk_bytes``, the shards least recently written or read are deleted once the directory holds more
than that; an entry whose shard is gone (deleted here or by another process) is built again.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from dreamir.io import atomic_path

# keys and values, each [layers, kv_heads, tokens, head_dim]
KeysValues = tuple[Tensor, Tensor]
# (prefix ids, documents' ids) -> each document's keys and values as a continuation of the prefix
DocumentEncoder = Callable[[list[int], list[list[int]]], list[KeysValues]]
_SAMPLE = 64  # values per weight tensor that enter the model fingerprint
# Shards kept open for reading: opening one parses its whole header (thousands of entries for a
# prebuilt training set), far more than reading an entry; bounded so file handles stay few.
_OPEN_SHARDS = 16


def model_fingerprint(model: nn.Module) -> str:
    """A hash of the model's config and of the first and last values of every weight: two models that
    differ in architecture or in any weight tensor's ends get different fingerprints."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    digest.update((config.to_json_string() if config is not None else type(model).__name__).encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1).float().cpu()
            digest.update(name.encode())
            digest.update(torch.cat([flat[:_SAMPLE], flat[-_SAMPLE:]]).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class BuildStats:
    documents: int = 0  # entries computed (not found in memory or on disk)
    seconds: float = 0.0
    bytes: int = 0
    found: int = 0  # entries asked for and found in memory or on disk (get only)
    evicted_shards: int = 0  # shards deleted to keep the directory under max_disk_bytes

    @property
    def documents_per_second(self) -> float:
        return self.documents / self.seconds if self.seconds else 0.0

    @property
    def bytes_per_document(self) -> float:
        return self.bytes / self.documents if self.documents else 0.0


class DocumentKVCache:
    """Keys and values of documents read as continuations of a prefix, computed once by ``encoder``."""

    def __init__(
        self,
        encoder: DocumentEncoder,
        fingerprint: str,
        dtype: torch.dtype = torch.float32,  # FrozenLLM passes its resolved precision's dtype
        directory: str | Path | None = None,
        max_memory_bytes: int = 2**30,
        batch_size: int = 8,
        show_progress: bool = False,
        max_disk_bytes: int | None = None,
    ) -> None:
        if max_disk_bytes is not None and max_disk_bytes <= 0:
            raise ValueError(f"max_disk_bytes must be positive (None: no bound), got {max_disk_bytes}")
        self.encoder = encoder
        self.fingerprint = fingerprint
        self.dtype = dtype
        self.directory = Path(directory) if directory is not None else None
        self.max_memory_bytes = max_memory_bytes
        self.max_disk_bytes = max_disk_bytes
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.stats = BuildStats()
        self._memory: OrderedDict[str, KeysValues] = OrderedDict()
        self._memory_bytes = 0
        self._on_disk: dict[str, Path] = {}
        self._shard_keys: dict[Path, list[str]] = {}
        self._open_shards: OrderedDict[Path, Any] = OrderedDict()
        self._scan()

    # ---- keys --------------------------------------------------------------------------------------------
    def key(self, prefix_ids: Sequence[int], document_ids: Sequence[int]) -> str:
        digest = hashlib.sha256(f"{self.fingerprint}|{self.dtype}|".encode())
        digest.update(torch.tensor(list(prefix_ids), dtype=torch.int64).numpy().tobytes())
        digest.update(b"|")
        digest.update(torch.tensor(list(document_ids), dtype=torch.int64).numpy().tobytes())
        return digest.hexdigest()

    # ---- reading -----------------------------------------------------------------------------------------
    def get(self, prefix_ids: list[int], documents: Sequence[list[int]]) -> list[KeysValues]:
        """Every document's keys and values, building (and storing) the missing ones."""
        keys = [self.key(prefix_ids, d) for d in documents]
        found = {k: entry for k in dict.fromkeys(keys) if (entry := self._lookup(k)) is not None}
        self.stats.found += len(found)
        missing = {k: d for k, d in zip(keys, documents, strict=True) if k not in found}
        if missing:
            found.update(self._build(prefix_ids, list(missing), list(missing.values())))
        return [found[k] for k in keys]

    def build(self, prefix_ids: list[int], documents: Sequence[list[int]]) -> BuildStats:
        """Make sure every document is cached (e.g. a training set's candidates before training)."""
        todo = {self.key(prefix_ids, d): d for d in documents}
        todo = {k: d for k, d in todo.items() if k not in self._memory and k not in self._on_disk}
        before = BuildStats(self.stats.documents, self.stats.seconds, self.stats.bytes)
        if todo:
            self._build(prefix_ids, list(todo), list(todo.values()))
        return BuildStats(
            self.stats.documents - before.documents,
            self.stats.seconds - before.seconds,
            self.stats.bytes - before.bytes,
        )

    def _lookup(self, key: str) -> KeysValues | None:
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        if key in self._on_disk:
            path = self._on_disk[key]
            try:
                shard = self._shard(path)
                entry = shard.get_tensor(f"{key}.keys"), shard.get_tensor(f"{key}.values")
                if self.max_disk_bytes is not None:
                    os.utime(path)  # recently read: the last shard the bound deletes
            except OSError:  # FileNotFoundError, or safetensors failing to open a missing file
                # Deleted under the disk bound (by this process or another sharing the directory): built again.
                self._forget(path)
                return None
            self._remember(key, entry)
            return entry
        return None

    def _shard(self, path: Path) -> Any:
        """An open, memory-mapped shard (shards are immutable once written, so a handle stays valid)."""
        if path in self._open_shards:
            self._open_shards.move_to_end(path)
        else:
            self._open_shards[path] = safe_open(path, framework="pt")
            while len(self._open_shards) > _OPEN_SHARDS:
                self._open_shards.popitem(last=False)
        return self._open_shards[path]

    def _remember(self, key: str, entry: KeysValues) -> None:
        self._memory[key] = entry
        self._memory_bytes += _nbytes(entry)
        # Keep at least the newest entry whatever the bound, so a lookup always finds what it just built.
        while self._memory_bytes > self.max_memory_bytes and len(self._memory) > 1:
            _, old = self._memory.popitem(last=False)
            self._memory_bytes -= _nbytes(old)

    # ---- building ----------------------------------------------------------------------------------------
    def _build(
        self, prefix_ids: list[int], keys: list[str], documents: list[list[int]]
    ) -> dict[str, KeysValues]:
        started = time.perf_counter()
        built: dict[str, Tensor] = {}
        result: dict[str, KeysValues] = {}
        # Similar lengths together: less padding per batch.
        order = sorted(range(len(documents)), key=lambda i: len(documents[i]))
        batches = range(0, len(order), self.batch_size)
        for start in tqdm(batches, desc="caching documents", disable=not self.show_progress):
            chunk = order[start : start + self.batch_size]
            entries = self.encoder(prefix_ids, [documents[i] for i in chunk])
            for i, (k, v) in zip(chunk, entries, strict=True):
                entry = (k.to(self.dtype).contiguous(), v.to(self.dtype).contiguous())
                self._remember(keys[i], entry)
                result[keys[i]] = entry
                built[f"{keys[i]}.keys"], built[f"{keys[i]}.values"] = entry
        self.stats.documents += len(documents)
        self.stats.bytes += sum(t.numel() * t.element_size() for t in built.values())
        if self.directory is not None:
            self._write_shard(built)
        self.stats.seconds += time.perf_counter() - started
        return result

    def _write_shard(self, tensors: dict[str, Tensor]) -> None:
        path = self._shard_directory() / f"shard-{uuid.uuid4().hex}.safetensors"
        with atomic_path(path) as tmp:
            save_file({k: t.cpu() for k, t in tensors.items()}, tmp, metadata=self._metadata())
        self._index(path, list(dict.fromkeys(name.rsplit(".", 1)[0] for name in tensors)))
        if self.max_disk_bytes is not None:
            self._trim_disk(keep=path)

    def _index(self, path: Path, keys: Sequence[str]) -> None:
        for key in keys:
            self._on_disk[key] = path
        self._shard_keys.setdefault(path, []).extend(keys)

    def _forget(self, path: Path) -> None:
        self._open_shards.pop(path, None)
        for key in self._shard_keys.pop(path, []):
            if self._on_disk.get(key) == path:
                del self._on_disk[key]

    def disk_bytes(self) -> int:
        """Bytes of this model's and dtype's shards on disk now (0 without a directory)."""
        return sum(size for _, size, _ in self._shards_on_disk())

    def _shards_on_disk(self) -> list[tuple[float, int, Path]]:
        """(last written or read, bytes, path) of every shard in the directory, oldest first."""
        if self.directory is None or not self._shard_directory().is_dir():
            return []
        shards = []
        for path in self._shard_directory().glob("shard-*.safetensors"):
            try:
                status = path.stat()
            except FileNotFoundError:  # deleted by another process meanwhile
                continue
            shards.append((status.st_mtime, status.st_size, path))
        return sorted(shards)

    def _trim_disk(self, keep: Path) -> None:
        """Delete the least recently used shards until the directory is under max_disk_bytes (never ``keep``,
        the shard just written, so a bound smaller than one build still caches that build)."""
        assert self.max_disk_bytes is not None
        shards = self._shards_on_disk()
        total = sum(size for _, size, _ in shards)
        for _, size, path in shards:
            if total <= self.max_disk_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            self._forget(path)
            total -= size
            self.stats.evicted_shards += 1

    # ---- disk --------------------------------------------------------------------------------------------
    def _metadata(self) -> dict[str, str]:
        return {"fingerprint": self.fingerprint, "dtype": str(self.dtype)}

    def _shard_directory(self) -> Path:
        assert self.directory is not None
        return self.directory / f"{self.fingerprint[:16]}-{str(self.dtype).removeprefix('torch.')}"

    def _scan(self) -> None:
        """Index the shards built for this model and dtype; any other shard is ignored."""
        if self.directory is None or not self._shard_directory().is_dir():
            return
        for path in sorted(self._shard_directory().glob("shard-*.safetensors")):
            try:
                with safe_open(path, framework="pt") as shard:
                    if shard.metadata() != self._metadata():
                        continue
                    names = list(shard.keys())
            except FileNotFoundError:  # deleted under another process's disk bound meanwhile
                continue
            self._index(path, list(dict.fromkeys(name.rsplit(".", 1)[0] for name in names)))

    def __len__(self) -> int:
        return len(set(self._memory) | set(self._on_disk))


def _nbytes(entry: KeysValues) -> int:
    return sum(t.numel() * t.element_size() for t in entry)
