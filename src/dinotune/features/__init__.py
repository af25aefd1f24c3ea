"""Frozen features: batched extraction, the on-disk cache keyed by content, and `dinotune embed`."""
