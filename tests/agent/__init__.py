"""The agent's tests, by room."""
