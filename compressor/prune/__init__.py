"""Pruning: importance scores, unstructured / 2:4 masks, structured channel removal."""
