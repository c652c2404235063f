"""Campaigns: the model, targeting, live results, pushes and device delivery."""
