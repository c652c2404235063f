"""Uplink ingest: parse, store once, acknowledge."""
