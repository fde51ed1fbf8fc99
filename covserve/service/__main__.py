"""``python -m service``: the same as ``covserve-serve``."""

from covserve.service.cli import main

raise SystemExit(main())
