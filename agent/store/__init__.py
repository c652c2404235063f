"""The device's SQLite store: one thread, the outbox, batches, decisions, offers, erasure."""
