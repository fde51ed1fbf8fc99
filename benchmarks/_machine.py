"""The provenance line every benchmark writes: CPU model, core count, platform and library versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

__all__ = ["describe_machine"]


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def describe_machine(*libraries: tuple[str, str]) -> str:
    """``"<CPU>, <n> logical CPUs, <platform>, Python x, NumPy y, <name> <version>..."``."""
    versions = [("Python", platform.python_version()), ("NumPy", np.__version__), *libraries]
    parts = [_cpu_model(), f"{os.cpu_count()} logical CPUs", platform.platform()]
    return ", ".join(parts + [f"{name} {value}" for name, value in versions])
