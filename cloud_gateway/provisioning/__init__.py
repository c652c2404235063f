"""Provisioning: claim credentials per batch, per-device X.509 identities, revocation."""
