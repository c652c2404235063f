"""The cloud gateway: ingest, device registry, campaigns, signed push, HTTP API."""

GATEWAY_VERSION = "0.1.0"
