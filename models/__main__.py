"""`python -m models <verb>`: see `models.cli`."""

from models.cli import main

raise SystemExit(main())
