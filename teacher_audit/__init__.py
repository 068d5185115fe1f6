"""teacher-audit: audit an untrusted image-classifier checkpoint before data-free distillation."""

__version__ = "0.1.0"
