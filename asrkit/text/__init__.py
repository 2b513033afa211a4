"""asrkit.text."""
