"""`python -m edgemart` is the `edgemart` command."""

from edgemart.cli import main

raise SystemExit(main())
