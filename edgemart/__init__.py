"""Edgemart's command line and the embedded demo broker; each room keeps its own logic."""

__version__ = "0.1.0"
