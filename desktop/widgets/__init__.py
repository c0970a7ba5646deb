"""Reusable widgets shared by the panes: job bar, error panel, learn panel, sidebar."""
