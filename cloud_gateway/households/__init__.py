"""Households (issue 17): the membership credentials the gateway signs for a home's devices."""
