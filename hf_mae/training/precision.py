"""Which mixed precision "auto" means on this machine."""

from pathlib import Path

import torch


def resolve_mixed_precision(choice: str) -> str:
    """`choice` unless it is "auto": bf16 on GPUs that support it (else fp16), bf16 on CPUs that compute it
    natively (AVX512-BF16 or AMX), otherwise "no"."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    try:  # bf16 matmuls are several times faster than fp32 only where the CPU computes them natively
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "no"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "no"
