"""``python -m service``: the same as ``covserve-serve``."""

from service.cli import main

raise SystemExit(main())
