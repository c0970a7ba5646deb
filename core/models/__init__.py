"""Models: where they come from (sources), whether they are safe to read (safety), the bundled
default (default_model), the load job (loading) and the model card (card).

Importing this package is cheap: torch and transformers are imported only by the functions
that run in the worker.
"""
