"""The device registry's operations: erasure."""
