"""The gateway's tests."""
