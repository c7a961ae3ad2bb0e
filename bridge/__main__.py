"""``python -m bridge`` is the same as the ``connector-bridge`` command."""

from bridge.cli import main

raise SystemExit(main())
