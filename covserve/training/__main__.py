"""``python -m covserve.training``: the ``covserve-train`` command line, for launchers that run a module
(``torchrun --nproc-per-node 2 -m covserve.training fit ...``)."""

import sys

from covserve.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
