"""The provenance line every benchmark writes (CPU model, core count, platform and library versions), and
the CPU split between a load generator and the servers it measures."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["describe_machine", "load_generator_pinned"]

PINNED_CPUS = 2
"""CPUs needed to keep the load generator and the servers apart."""


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


@contextmanager
def load_generator_pinned() -> Iterator[set[int] | None]:
    """This process on the second allowed CPU for the block, so that a server started meanwhile on the CPU
    set yielded (the first) does not share a core with the client measuring it; ``None`` (nothing pinned)
    with fewer than two CPUs or off Linux. The process's CPU set is restored afterwards."""
    if not hasattr(os, "sched_getaffinity"):
        yield None
        return
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < PINNED_CPUS:
        yield None
        return
    os.sched_setaffinity(0, {allowed[1]})
    try:
        yield {allowed[0]}
    finally:
        os.sched_setaffinity(0, set(allowed))
