"""Training: the KaVa objective, checkpoints and the accelerate training loop."""
