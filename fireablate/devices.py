"""Which device a run uses and in which precision, with the reason in words.

``--precision auto`` picks bf16 autocast wherever the hardware computes bf16 natively, because
there it is 2-3x faster than fp32 for this model: CUDA devices of compute capability 8.0 or newer
(Ampere on), CPUs with AMX tiles (Intel Sapphire Rapids on) or the AVX-512 bf16 instructions (AMD
Zen 4 on, Intel Cooper Lake), and Arm CPUs with bf16 or SVE-bf16. Older CUDA devices get fp16 with
a gradient scaler; other CPUs stay in fp32, where emulated bf16 would be slower.
"""

from __future__ import annotations

from typing import Callable

import torch

from .errors import UsageError

# torch.cpu.get_capabilities() keys that mean native bf16 arithmetic, in the order we name them.
CPU_BF16_KEYS = ("amx_bf16", "avx512_bf16", "bf16", "sve_bf16")


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA, then MPS, then the CPU) or a device that this machine really has."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA GPU is available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {name}: MPS is not available on this machine")
    elif dev.type != "cpu":
        raise UsageError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return dev


def _torch_cpu_capabilities() -> dict:
    get = getattr(torch.cpu, "get_capabilities", None)  # public since torch 2.6
    if get is None:
        return {}
    try:
        return dict(get())
    except Exception:  # an unknown CPU must not stop a run: fall back to the older checks
        return {}


def _legacy_cpu_bf16() -> str | None:
    """The private checks that older torch versions offer."""
    checks = (("amx_bf16", "_init_amx"), ("avx512_bf16", "_is_avx512_bf16_supported"))
    for key, name in checks:
        fn = getattr(getattr(torch._C, "_cpu", None), name, None)
        try:
            if fn is not None and fn():
                return key
        except Exception:
            continue
    return None


def cpu_bf16_feature(capabilities: Callable[[], dict] = _torch_cpu_capabilities) -> str | None:
    """The CPU feature that makes bf16 fast here (e.g. 'amx_bf16'), or None."""
    caps = capabilities()
    for key in CPU_BF16_KEYS:
        if caps.get(key):
            return key
    return None if caps else _legacy_cpu_bf16()


def resolve_precision(requested: str, device: torch.device,
                      cpu_feature: Callable[[], str | None] = cpu_bf16_feature) -> tuple[str, str]:
    """(precision, why): the precision a run uses on ``device`` and the reason, for its first line."""
    if requested != "auto":
        return requested, "asked for"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return "bf16", f"auto: compute capability {major}.{minor} has native bf16"
        return "fp16", f"auto: compute capability {major}.{minor} has no native bf16; fp16 with loss scaling"
    if device.type == "cpu":
        feature = cpu_feature()
        if feature:
            return "bf16", f"auto: this CPU has {feature}"
        return "fp32", "auto: this CPU has no native bf16 (no AMX or AVX-512 bf16)"
    return "fp32", f"auto: fp32 on {device.type}"


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_allocator_kept = False


def keep_cpu_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the system.

    A training step on the CPU allocates and frees the same large activation buffers (tens of
    MB each) every step. glibc serves blocks that large with a fresh mmap and unmaps them on free,
    so every step page-faults its way through hundreds of MB of new memory: zero-filling a max-pool
    gradient ran at 0.7 GB/s. Serving them from the heap and never trimming it made the whole bf16
    step 15-25% faster (measured side by side, `benchmarks/train_speed.py`). Peak memory is what
    the step needs anyway; it is just not returned between steps. Process-wide and idempotent;
    True where it applied (Linux with glibc), False elsewhere.
    """
    global _allocator_kept
    if _allocator_kept:
        return True
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    _allocator_kept = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _allocator_kept
