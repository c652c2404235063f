"""Simulated households and fleets running the real agent code, with scripted usage and faults."""
