"""Decisions: held-offer catalog, policy, ranking, attribution, outcome memory."""
