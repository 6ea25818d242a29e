"""``python -m natinv``: the command-line interface."""

from natinv.cli import main

raise SystemExit(main())
