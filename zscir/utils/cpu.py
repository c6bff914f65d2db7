"""What this CPU computes natively: its feature flags, read once at run time.

Reduced precisions are only worth using where the CPU has kernels for them: without
AVX512-FP16 (or AMX-FP16) fp16 matmuls are emulated, 45-100x slower than fp32; bf16 needs
AVX512-BF16 or AMX-BF16. Encoding (zscir.features.precision) and exact search
(zscir.index.kernels) both decide from here.
"""

from __future__ import annotations

import functools
import platform

# CPU flags that make each reduced precision native (any one of them suffices)
NATIVE_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}


@functools.lru_cache(maxsize=1)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of this machine (empty where /proc/cpuinfo cannot be read)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.split(":", 1)[0].strip() in ("flags", "Features"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, as measurements record it (``platform`` where /proc/cpuinfo cannot be read)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == "model name":
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def has_native(precision: str, flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU (``flags``, default this one's) runs ``precision`` ("bf16" / "fp16") natively."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_FLAGS[precision])
