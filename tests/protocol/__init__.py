"""The wire contract's tests: pure, no I/O."""
