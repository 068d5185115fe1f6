"""Thin command-line layer over the library. Each command lives in its own module."""

from teacher_audit.cli.app import app, main

__all__ = ["app", "main"]
