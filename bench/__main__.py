"""`python -m bench` runs the benchmarks."""

from bench.cli import main

raise SystemExit(main())
