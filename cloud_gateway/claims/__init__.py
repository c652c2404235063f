"""Flash-sale claims: atomic grants from limited stock."""
