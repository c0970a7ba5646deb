"""One module per wizard step; each holds one pane class with a ``__main__`` preview."""
