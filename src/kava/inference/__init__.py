"""Inference: batched generation in latent, CoT and direct modes with forward-pass counts."""

from kava.inference.generate import MODES, Generation, generate

__all__ = ["MODES", "Generation", "generate"]
