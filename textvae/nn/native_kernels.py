"""The importance-weighted NLL's two hot loops as native kernels, on CPUs
with AVX-512 BF16 and no AMX (``native_kernels.cpp``).

Scoring every token under hundreds of latent samples is one large product,
(tokens x samples, H) times the (H, V) output weights, then a log-softmax
over V for one gold entry a row. Through torch, the product writes every
logit to memory and the log-sum-exp reads it back, each a pass over tens of
megabytes a chunk. ``score_tokens`` does both in one pass: bf16 products
with fp32 sums (vdpbf16ps), each 8 x 48 tile of logits folded into its
rows' running maximum and sum while it is still in registers (the online
softmax normaliser of Milakov & Gimelshein 2018), so only one number a row
leaves it. ``lstm_recurrence`` runs the LSTM decoder's steps under every
sample the same way: the recurrent product with the cell update in its
epilogue, writing h straight into the hidden states that are scored.

The values are those of the compiled kernels (fused_scoring.py) in bf16:
products of bf16-rounded inputs and weights summed in fp32, biases rounded
to bf16 as autocast rounds them, h rounded to bf16 each step; the recurrent
product is not rounded to bf16 before the cell (autocast rounds it), the
exponential is a polynomial within 2e-7 relative of exp, and sums run in
another order, so a sentence's estimate agrees with the compiled kernels'
within bf16 rounding (tested).

Used inside ``fused_scoring()`` without autograd, under bf16 autocast (or
bf16 weights), for a plain ``nn.Linear`` output of even width and a
one-layer LSTM of a width divisible by 16, where the CPU has AVX-512 BF16
and no AMX (with AMX, oneDNN's tile products are several times faster than
any vdpbf16ps loop, and the compiled kernels serve). The library runs on
the process's OpenMP pool (torch's), at torch's thread count. It is compiled
on first use with the system's C++ compiler (``CXX`` or g++, about two
seconds) and kept in the user's cache folder (user_cache.py) under a hash of
its source, flags and compiler; where it cannot be built or loaded, that is
logged once and the compiled or eager path serves. ``TEXTVAE_NATIVE_KERNELS=off``
turns them off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from .. import runtime
from ..user_cache import cache_folder, open_trusted, store
from . import fused_scoring
from .prepared import prepared

log = logging.getLogger("textvae")

SOURCE = Path(__file__).with_name("native_kernels.cpp")
FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512dq",
         "-mavx512vl", "-mavx512bf16", "-mfma"]
PAD_LOGIT = -1e30  # the padding columns' bias: exp() of it is 0 beside any real logit


class NativeKernels:
    """The kernels' state in this process: ``enabled`` (False turns them off,
    for timing against the compiled kernels; ``TEXTVAE_NATIVE_KERNELS=off``
    starts a process with them off), and the library once loaded."""

    enabled = os.environ.get("TEXTVAE_NATIVE_KERNELS", "").strip().lower() not in ("off", "0", "false", "no")
    library: Optional[ctypes.CDLL] = None
    failed = False  # building or loading failed once: not tried again
    calls = 0  # native calls made in this process (evaluation results say whether they ran)


@lru_cache(maxsize=1)
def cpu_supported() -> bool:
    """AVX-512 BF16 without AMX, on x86-64 Linux."""
    flags = runtime.cpu_flags() if platform.machine() in ("x86_64", "AMD64") else frozenset()
    return "avx512_bf16" in flags and "amx_bf16" not in flags


def _compile(compiler: list[str], target: Path) -> None:
    """Build the library at ``target`` (raises on failure)."""
    done = subprocess.run([*compiler, *FLAGS, str(SOURCE), "-o", str(target)], capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no message"])[0]
        raise RuntimeError(f"{' '.join(compiler)} failed: {first[:200]}")


def _load() -> ctypes.CDLL:
    """The library from the cache, or compiled now (and cached where the folder allows)."""
    compiler = shlex.split(os.environ.get("CXX", "")) or [shutil.which("g++") or shutil.which("c++") or ""]
    if not compiler[0]:
        raise RuntimeError("no C++ compiler (set CXX, or install g++)")
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + version.encode()).hexdigest()[:24]
    folder = cache_folder()
    cached = folder / f"kernels-{digest}.so" if folder is not None else None
    kept = open_trusted(cached) if cached is not None else None
    if kept is not None:
        with kept:  # loaded through the checked open file, which cannot have been swapped
            try:
                return ctypes.CDLL(f"/proc/self/fd/{kept.fileno()}")
            except OSError as error:  # a damaged file: build it again
                log.debug(f"the cached kernels {cached} could not be loaded ({error}); building them again")
    with tempfile.TemporaryDirectory(prefix="textvae-kernel-") as scratch:
        built = Path(scratch) / "kernels.so"
        _compile(compiler, built)
        library = ctypes.CDLL(str(built))  # loaded: the file may go
        if cached is not None:
            store(cached, lambda out: out.write(built.read_bytes()), "the native kernels")
        return library


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernel, building it on first use; None once that has failed (logged once)."""
    if NativeKernels.library is None and not NativeKernels.failed:
        try:
            lib = _load()
            for name in ("textvae_score", "textvae_score_tile_columns", "textvae_lstm_step"):
                getattr(lib, name).restype = ctypes.c_int
            NativeKernels.library = lib
        except Exception as error:  # noqa: BLE001 (a compiler's or loader's failure, of any kind)
            NativeKernels.failed = True
            log.info(f"the native kernels are unavailable ({error}); the compiled ones serve")
    return NativeKernels.library


def pack(weight: Tensor) -> Tensor:
    """bf16 rows (R, H), R a multiple of 16, as the kernels read them:
    (R / 16, H / 2, 16, 2), the 32 values of one vdpbf16ps together."""
    rows, width = weight.shape
    return weight.view(rows // 16, 16, width // 2, 2).permute(0, 2, 1, 3).contiguous()


def _output_weights(output: nn.Linear, tile_columns: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """bf16 weights (V, H), their bias as fp32 of its bf16 rounding, and both
    padded to a multiple of ``tile_columns`` and packed (PAD_LOGIT biases)."""
    weight = output.weight.detach().to(torch.bfloat16).contiguous()  # (V, H)
    vocab, hidden = weight.shape
    bias = (output.bias.detach().to(torch.bfloat16).float() if output.bias is not None
            else torch.zeros(vocab)).contiguous()
    padded = -(-vocab // tile_columns) * tile_columns
    packed = pack(torch.cat([weight, weight.new_zeros(padded - vocab, hidden)]))
    padded_bias = torch.cat([bias, bias.new_full((padded - vocab,), PAD_LOGIT)])
    return weight, bias, packed, padded_bias


def _recurrent_weights(lstm: nn.Module, words: int) -> Tensor:
    """[W_hh | W_z] (4H, H + D'), gates i, f, g, o: the recurrent weights and
    the input weights of z (the input's columns from ``words`` on; D' = D
    made even with a zero column), in bf16, rows reordered to (H / 16 unit
    groups, 4 gates, 16 units) and packed, so that one tile of the kernel
    has all four gates of 16 units."""
    weight_hh = lstm.weight_hh_l0.detach().to(torch.bfloat16)
    latent = lstm.weight_ih_l0.detach()[:, words:].to(torch.bfloat16)
    if latent.shape[1] % 2:
        latent = torch.cat([latent, latent.new_zeros(len(latent), 1)], 1)
    gates, width = weight_hh.shape
    joined = torch.cat([weight_hh, latent], 1)
    grouped = joined.view(4, width // 16, 16, joined.shape[1]).transpose(0, 1)
    return pack(grouped.reshape(gates, joined.shape[1]))


def applies(tensor: Tensor, weight: Tensor) -> bool:
    """Whether a native kernel may take ``tensor`` and ``weight`` here: inside
    ``fused_scoring()`` without autograd, on a CPU that has the kernels, in bf16."""
    if not (NativeKernels.enabled and fused_scoring.active() and tensor.device.type == "cpu" and cpu_supported()):
        return False
    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return autocast_bf16 or weight.dtype == torch.bfloat16 or tensor.dtype == torch.bfloat16


def score_tokens(hidden: Tensor, output: nn.Module, targets: Tensor, mask: Tensor) -> Optional[Tensor]:
    """log p(target | hidden) at the positions where ``mask`` is True, in
    their row-major order: hidden (B, T, H), targets and mask (B, T) -> (N,)
    fp32; None where the kernel does not apply or is unavailable."""
    if type(output) is not nn.Linear or hidden.shape[-1] % 2 or not applies(hidden, output.weight):
        return None
    if output.weight.shape[1] != hidden.shape[-1] or not targets.shape == mask.shape == hidden.shape[:-1]:
        return None  # torch's own path says what does not fit
    lib = library()
    if lib is None:
        return None
    tile_columns = lib.textvae_score_tile_columns()
    weight, bias, packed, padded_bias = prepared(output, "native output", (output.weight, output.bias),
                                              lambda: _output_weights(output, tile_columns))
    width = hidden.shape[-1]
    states = hidden.detach().to(torch.bfloat16).reshape(-1, width).contiguous()  # (B * T, H)
    rows = mask.reshape(-1).nonzero().squeeze(1).contiguous()  # (N,) int64
    gold = targets.reshape(-1)[rows].to(torch.int64).contiguous()
    if len(gold) and (int(gold.min()) < 0 or int(gold.max()) >= weight.shape[0]):
        raise IndexError("a target id is outside the vocabulary")
    out = torch.empty(len(rows), dtype=torch.float32)
    pointer = ctypes.c_void_p
    failed = lib.textvae_score(pointer(states.data_ptr()), pointer(rows.data_ptr()), pointer(gold.data_ptr()),
                               ctypes.c_int64(len(rows)), pointer(packed.data_ptr()),
                               pointer(padded_bias.data_ptr()), ctypes.c_int64(packed.shape[0] * 16),
                               ctypes.c_int64(width), pointer(weight.data_ptr()), pointer(bias.data_ptr()),
                               pointer(out.data_ptr()), ctypes.c_int(torch.get_num_threads()))
    if failed:
        return None
    NativeKernels.calls += 1
    return out


def lstm_recurrence(lstm: nn.Module, words: int, h: Tensor, c: Tensor, word_gates: Tensor, z: Optional[Tensor],
                    hidden: Tensor) -> bool:
    """The one-layer ``lstm``'s steps under every sample, into ``hidden``
    (rows, T, H) bf16: h (rows, H) the state before the first step, c (rows,
    H) fp32 its cell (not changed), word_gates (T, B, 4H) fp32 the words'
    share of the gates (biases included), z (S, B, D) the samples where they
    are an input (its weights the input's columns from ``words`` on), else
    None; row s * B + b for sentence b (LSTMDecoder.states_under_samples).
    False, with nothing written, where the kernel does not apply or is
    unavailable."""
    rows, steps, width = hidden.shape
    if width % 16 or hidden.dtype != torch.bfloat16 or not applies(hidden, lstm.weight_hh_l0):
        return False
    batch = word_gates.shape[1] if word_gates.dim() == 3 else 0
    fits = (hidden.is_contiguous() and batch and rows % batch == 0 and word_gates.shape == (steps, batch, 4 * width)
            and h.shape == c.shape == (rows, width) and lstm.weight_hh_l0.shape == (4 * width, width)
            and (z is None or (z.numel() == rows * (lstm.weight_ih_l0.shape[1] - words))))
    if not fits:
        return False
    lib = library()
    if lib is None:
        return False
    params = (lstm.weight_hh_l0, lstm.weight_ih_l0)
    packed = prepared(lstm, f"native recurrent {words}", params, lambda: _recurrent_weights(lstm, words))
    latent = (packed.shape[1] * 2) - width  # D made even; 0 without z
    if z is not None:
        z = z.reshape(rows, -1).to(torch.bfloat16)
        z = torch.cat([z, z.new_zeros(rows, latent - z.shape[1])], 1).contiguous()  # (rows, D')
    elif latent:
        return False  # weights for z but no z given
    cell = c.float().clone().contiguous()
    h = h.to(torch.bfloat16).contiguous()
    word_gates = word_gates.float().contiguous()  # (T, B, 4H)
    pointer, threads = ctypes.c_void_p, ctypes.c_int(torch.get_num_threads())
    z_pointer = pointer(z.data_ptr() if z is not None else None)
    for t in range(steps):
        previous = h if t == 0 else hidden[:, t - 1]
        out = hidden[:, t]
        if lib.textvae_lstm_step(pointer(previous.data_ptr()), ctypes.c_int64(previous.stride(0)), z_pointer,
                                 ctypes.c_int64(latent), pointer(packed.data_ptr()), ctypes.c_int64(width),
                                 pointer(word_gates[t].data_ptr()), ctypes.c_int64(word_gates.shape[1]),
                                 pointer(cell.data_ptr()), pointer(out.data_ptr()), ctypes.c_int64(out.stride(0)),
                                 ctypes.c_int64(rows), threads):
            return False
    NativeKernels.calls += 1
    return True
