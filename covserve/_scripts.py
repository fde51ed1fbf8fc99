"""Console-script entry points that must start even where an extra is missing.

``covserve-train`` is declared by every install of the distribution, the service image's included, but
runs only with the ``train`` extra; without it, it says so in one line and exits 2 instead of a
traceback.
"""

import sys
from importlib.util import find_spec

__all__ = ["TRAIN_EXTRA_MODULES", "train"]

TRAIN_EXTRA_MODULES = ("torch", "onnx", "scipy", "pandas", "yaml", "tqdm", "matplotlib")
"""Top-level modules of the ``train`` extra that ``covserve-train`` cannot start without."""


def train() -> int:
    """``covserve-train``: the training CLI, or one line naming what is missing (exit code 2)."""
    missing = [name for name in ("covserve.training", *TRAIN_EXTRA_MODULES) if find_spec(name) is None]
    if missing:
        print(
            f"covserve-train: the training extra is not installed here (missing: {', '.join(missing)}); "
            "install it with pip install 'covserve[train]'",
            file=sys.stderr,
        )
        return 2
    from covserve.training.cli import main

    return main()
