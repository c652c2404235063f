"""Fault tests: kills, crashes, partitions, audits."""
