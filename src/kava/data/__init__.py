"""Data: training sets (GSM8k-AUG and offline derivations), evaluation sets, batching."""
