"""A user's training data: reading files, recognising their shape, checking every row."""
