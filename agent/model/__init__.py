"""The on-device model: loading, scoring, signed updates."""
