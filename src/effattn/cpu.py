"""What the CPU is and has, from /proc/cpuinfo: its name, clock and the SIMD flags that decide low-precision speed
(the bench records them; the OpenVINO runner's rewrite needs AMX). Imports nothing heavy."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence


def cpu_flags(
    wanted: Sequence[str] = (
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
    ),
) -> list[str]:
    """The CPU's SIMD flags that decide low-precision speed (from /proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            have = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in wanted if flag in have]


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_vendor() -> str | None:
    """GenuineIntel, AuthenticAMD, ... (/proc/cpuinfo), or None."""
    return _cpuinfo("vendor_id")


def cpu_ghz() -> float | None:
    """The clock /proc/cpuinfo reports for the first core (a VM's is often the nominal one), in GHz."""
    mhz = _cpuinfo("cpu MHz")
    try:
        return float(mhz) / 1e3 if mhz else None
    except ValueError:
        return None


def _cpuinfo(field: str) -> str | None:
    """The first value of ``field`` in /proc/cpuinfo, or None (no such file or field)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.split(":", 1)[0].strip() == field), None)
    except OSError:
        return None


def has_amx() -> bool:
    """Whether oneDNN (under OpenVINO's CPU plugin) runs AMX here: the CPU has AMX-BF16 and ``ONEDNN_MAX_CPU_ISA``
    does not cap the ISA below it (oneDNN's own switch, which OpenVINO honours)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    return "amx_bf16" in cpu_flags(("amx_bf16",)) and (cap in ("ALL", "DEFAULT") or "AMX" in cap)
