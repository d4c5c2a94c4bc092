"""Benchmarks: `kava bench speed|infer|quality` (measured side by side in one run)."""
