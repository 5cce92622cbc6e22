"""checkpoints stage."""
