"""``python -m weightnorm``: the command line."""

from .cli import main

raise SystemExit(main())
