"""The one place that decides the compute dtype.

Every precision option takes ``auto`` (the default), ``bfloat16`` or ``float32``. ``auto`` means bf16 where
the device computes it natively (a CPU with AMX or AVX512-BF16, an ARM CPU with its BF16 extension; a CUDA
device that supports it) and float32 elsewhere: on a CPU without native bf16 a bf16 matrix product is
emulated, measured 52x slower than float32 on an AVX2-only processor. Asking for bf16 there is allowed but
warned about, once per process.

Weights, optimiser states and scores stay float32 whatever the choice: bf16 is only ever a compute dtype
(autocast, or frozen bf16 copies of a frozen model's weights).
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from typing import Literal

import torch

Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16")
Resolved = Literal["float32", "bfloat16"]
# Set to float32 or bfloat16, it decides what "auto" means in this process (the test suite pins float32, so
# no test depends on the processor's kind); options that name a dtype are not affected.
AUTO_OVERRIDE_VARIABLE = "DREAMIR_AUTO_PRECISION"
PRECISION_HELP = (
    "auto: bf16 where the processor computes it natively (AMX / AVX512-BF16), float32 elsewhere; "
    "bfloat16 or float32 to force one"
)

# Instruction-set flags (torch.cpu.get_capabilities) under which bf16 matrix products run natively.
_NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16", "sve_bf16")
_warned: set[str] = set()


@functools.cache
def _cpu_capabilities() -> dict[str, object]:
    try:
        return dict(torch.cpu.get_capabilities())
    except (AttributeError, RuntimeError):  # an older torch: no capability report
        return {}


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes bf16 matrix products natively (not by emulation)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    flags = _cpu_capabilities()
    return any(bool(flags.get(flag)) for flag in _NATIVE_BF16_FLAGS)


def resolve(precision: str, device: str | torch.device = "cpu") -> Resolved:
    """``auto`` made concrete for ``device``; ``bfloat16`` on a device without native bf16 warns once."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    native = native_bf16(device)
    if precision == "auto":
        override = os.environ.get(AUTO_OVERRIDE_VARIABLE)
        if override:
            if override not in ("float32", "bfloat16"):
                raise ValueError(f"{AUTO_OVERRIDE_VARIABLE}={override!r}: must be float32 or bfloat16")
            precision = override
        else:
            return "bfloat16" if native else "float32"
    if precision == "bfloat16" and not native and str(device) not in _warned:
        _warned.add(str(device))
        warnings.warn(
            f"bfloat16 was asked for, but this {describe_device(device)} has no native bf16: every bf16 "
            "matrix product is emulated, tens of times slower than float32 (52x measured on an AVX2 "
            "processor). Use --precision auto (or float32) unless you are checking bf16 numerics.",
            stacklevel=2,
        )
    return precision  # type: ignore[return-value]


def dtype_of(precision: str, device: str | torch.device = "cpu") -> torch.dtype:
    return torch.bfloat16 if resolve(precision, device) == "bfloat16" else torch.float32


def autocast(precision: str, device: str | torch.device = "cpu") -> contextlib.AbstractContextManager:
    """bf16 autocast when ``precision`` resolves to bf16 on ``device``; nothing in float32."""
    if resolve(precision, device) == "bfloat16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels use (e.g. AVX2, AVX512)."""
    return torch.backends.cpu.get_cpu_capability()


def describe_device(device: str | torch.device = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cpu":
        name = _cpu_capabilities().get("cpu_name") or "CPU"
        return f"{name} ({cpu_capability()})"
    return str(device)


def machine_record(**components: str) -> dict[str, object]:
    """What logs, reports and benchmark files record about where a figure was made: the processor, its
    vector instruction set, whether it computes bf16 natively, torch's threads, and the (resolved) dtype of
    each component passed as ``name=precision``."""
    flags = _cpu_capabilities()
    return {
        "cpu": flags.get("cpu_name") or "unknown",
        "cpu_capability": cpu_capability(),
        "native_bf16": native_bf16("cpu"),
        "amx": bool(flags.get("amx_bf16")),
        "avx512_bf16": bool(flags.get("avx512_bf16")),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtypes": {name: resolve(precision) for name, precision in components.items()},
    }


def describe_compute(record: dict[str, object]) -> str:
    """One line of a :func:`machine_record`: "AVX2, no native bf16, 2 threads; retriever float32, ..."."""
    native = "native bf16" if record["native_bf16"] else "no native bf16"
    dtypes = record.get("dtypes") or {}
    parts = ", ".join(f"{name} {dtype}" for name, dtype in dtypes.items())  # type: ignore[union-attr]
    threads = f"{record['threads']} thread" + ("" if record["threads"] == 1 else "s")
    return f"{record['cpu_capability']}, {native}, {threads}" + (f"; {parts}" if parts else "")
