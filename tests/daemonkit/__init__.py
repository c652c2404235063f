"""The plumbing both daemons share."""
