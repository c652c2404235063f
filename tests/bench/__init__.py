"""Checks of the benchmarks' own helpers."""
