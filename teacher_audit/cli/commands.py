"""Imports every command module so that each registers itself on ``app``."""

from teacher_audit.cli import (  # noqa: F401
    cmd_calibrate,
    cmd_distill,
    cmd_inspect,
    cmd_scan,
    cmd_zoo,
)
