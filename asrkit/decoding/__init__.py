"""asrkit.decoding."""
