"""Report model and writers."""
