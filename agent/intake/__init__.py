"""Signal intake: validation of what apps hand in, consent, aggregates, the intake service."""
