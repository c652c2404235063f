"""Members, tiers and points (issue 19): the ledger's rules and the desk that signs statuses."""
