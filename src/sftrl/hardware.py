"""What the machine offers: the CPU's name and whether it computes in bfloat16 natively.

Without bfloat16 instructions torch still runs bf16 on a CPU, converting to float32 and back around
generic kernels: on an AVX2-only AMD EPYC a (6000x192)·(192x512) product took 1.3 s in bf16 against
0.03 s in float32 (one thread). So `mixed_precision=bf16` on such a CPU is refused
(:func:`sftrl.validate.check_precision`) rather than run 40 times slower.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

# /proc/cpuinfo flags of native bfloat16 arithmetic: x86 AVX512-BF16 and AMX-BF16, Arm's BF16 extension.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC 7B13", "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"); the
    processor string where /proc/cpuinfo has none (macOS, Windows); "unknown CPU" when neither says."""
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return " ".join(value.split())
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> set[str]:
    """The instruction-set flags /proc/cpuinfo lists (x86 `flags`, Arm `Features`); empty elsewhere."""
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_bf16_supported() -> bool:
    """Whether this CPU has bfloat16 instructions: AVX512-BF16 or AMX (what oneDNN's bf16 products run
    on), or Arm's BF16. torch's own probes (torch.cpu._is_avx512_bf16_supported, _is_amx_tile_supported;
    x86 only, private) are asked first, then /proc/cpuinfo's flags. torch.ops.mkldnn._is_mkldnn_bf16_supported
    is not used: it also says yes on AVX512 CPUs without BF16, where oneDNN emulates it."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # a private probe that changed or fails: fall back on the flags
            pass
    return bool(cpu_flags() & set(BF16_FLAGS))
