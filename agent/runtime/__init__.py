"""The agent's composition and life: building its parts, owning its loops, status, memory."""
