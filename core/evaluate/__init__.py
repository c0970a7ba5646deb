"""Measuring models: perplexity now; task metrics and comparisons later."""
