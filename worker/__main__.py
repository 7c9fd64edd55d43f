"""`python -m worker` is the `renewals` command."""

from .ops.cli import main

raise SystemExit(main())
