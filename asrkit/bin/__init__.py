"""asrkit.bin."""
