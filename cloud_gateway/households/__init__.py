"""Households (issue 17): the membership grants the gateway signs for a home's devices."""
