"""Whole-loop tests across processes and brokers."""
