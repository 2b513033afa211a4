"""asrkit.data."""
