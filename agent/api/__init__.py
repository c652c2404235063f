"""The device-local HTTP API apps on the device call."""
