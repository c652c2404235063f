"""The gateway's database: the store seam, its SQLite backend, recorded migrations."""
