"""First start: a factory claim credential in, this device's own X.509 identity out."""
