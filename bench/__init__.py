"""Benchmarks: each figure measured beside its baseline in the same run; never timed tests."""
