"""The model registry: validated uploads, signed manifests, staged rollouts."""
