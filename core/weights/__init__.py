"""Weights as data: stream tensors from a checkpoint, describe their distributions."""
