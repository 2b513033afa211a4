"""asrkit.losses."""
