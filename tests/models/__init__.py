"""Training, features and export."""
