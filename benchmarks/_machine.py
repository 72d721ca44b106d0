"""What the benchmark scripts print about the machine they ran on.

Imported by the scripts in this folder (``python benchmarks/<script>.py`` puts
the folder on ``sys.path``); not part of the package.
"""

from __future__ import annotations

import contextlib
import platform


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
