"""asrkit.training."""
