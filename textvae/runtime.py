"""Where and how computations run: device resolution and description, bf16 autocast.

At the bottom of the package (it imports only ``errors`` and ``threads``), so that the
models, the evaluation, the trainer and the commands share one answer. Modules
never pick a device themselves; the trainer and the commands call
``resolve_device`` with the user's setting.
"""

from __future__ import annotations

import contextlib
import logging
import platform
from functools import lru_cache, partial
from pathlib import Path

import torch

from .errors import TextVAEError
from .threads import describe_threads

log = logging.getLogger("textvae")


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TextVAEError(f"train.device={name} but no CUDA device is available")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """What ran a job, for result files: "cpu, 2 threads, AMD EPYC (native
    bf16)" or "cuda:0, NVIDIA H200". A CPU's speed, and whether bf16 ran as
    asked, depend on the model, so figures say which."""
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        return f"cuda:{index}, {torch.cuda.get_device_name(index)}"
    bf16 = "native bf16" if native_bf16(device) else "no native bf16"
    return f"{device}, {describe_threads()}, {cpu_name()} ({bf16})"


@lru_cache(maxsize=None)
def _cpuinfo(field: str) -> str:
    """The first ``field`` line's value in /proc/cpuinfo (Linux); "" elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name as the kernel reports it (Linux), else the platform's."""
    return _cpuinfo("model name") or platform.processor() or "unknown CPU"


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them ("avx512_bf16", "amx_bf16", ...; empty elsewhere)."""
    return frozenset(_cpuinfo("flags").split())


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 runs natively here: CUDA, or a CPU with AVX-512 BF16 or
    AMX. Elsewhere (e.g. an AVX2-only EPYC) oneDNN has no bf16 LSTM and its
    bf16 matrix products are emulated, several times slower than fp32 (the
    measurement is in the message of commit 2543cdf, which added this check;
    timings live with their commit or in the README's Speed section, not here)."""
    if device.type == "cuda":
        return True
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def effective_precision(device: torch.device, precision: str) -> str:
    """``precision`` as it runs on ``device``: bf16 falls back to fp32 where
    the hardware has no bf16 (said once in the log)."""
    if precision == "bf16" and not native_bf16(device):
        if not getattr(effective_precision, "_warned", False):
            effective_precision._warned = True
            log.info("bf16 asked for, but this CPU has no native bf16 (no AVX-512 BF16 or AMX): running fp32")
        return "fp32"
    return precision


def autocast_context(device: torch.device, precision: str):
    """A context factory: bf16 autocast on CUDA and CPUs with native bf16; fp32 otherwise."""
    if effective_precision(device, precision) == "bf16":
        return partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext
