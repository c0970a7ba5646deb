"""Fine-tuning: the menu of methods (methods.py); datasets are read by core.data."""
