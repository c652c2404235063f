"""Offers the cloud pushed: the verified book and claims for limited ones."""
