"""Feature windows: hourly signal buckets and the context a decision reads."""
