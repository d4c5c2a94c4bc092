"""KaVa: latent reasoning via compressed KV-cache distillation (arXiv 2510.02312)."""

__version__ = "0.1.0"
