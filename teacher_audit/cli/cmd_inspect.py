"""``teacher-audit inspect PATH``: what is this checkpoint, and can it be audited safely?

Prints a table to stdout (format, size, SHA-256, pickle globals allowed/refused, tensor and parameter
counts, resolved architecture and input spec with the source of each field); ``--json FILE`` writes the
same facts atomically (also when the file is refused, so CI can read why). Exit codes: 0 loaded,
2 error while reading (corrupt file), 3 not auditable (unsupported format, refused pickle, unknown
architecture, TorchScript without ``--trust-torchscript``), 4 usage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from teacher_audit.cli.app import app, err, guarded, is_stdout, one_line, out, write_or_stdout
from teacher_audit.errors import AuditError
from teacher_audit.exitcodes import ExitCode, exit_code_for
from teacher_audit.intake.inspect import inspect_document, inspect_path, render_table, spec_flags, to_json
from teacher_audit.intake.load import LoadOptions


@app.command("inspect")
@guarded
def inspect(
    path: Path = typer.Argument(..., help="Checkpoint file (.pt/.pth/.ckpt, .safetensors, .onnx, TorchScript); "
                                          "the format is detected from the content."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the intake result as JSON to this file ('-' = stdout, "
                                                                "instead of the table)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture name from the registry (overrides the "
                                                            "matcher and the model card)."),
    allow_global: list[str] = typer.Option([], "--allow-global", metavar="MOD.NAME",
                                           help="Admit one more pickle global (repeatable; recorded in the report)."),
    trust_torchscript: bool = typer.Option(False, "--trust-torchscript",
                                           help="Load TorchScript archives. They are CODE: only for trusted files."),
    input_size: Optional[str] = typer.Option(None, "--input-size", metavar="CxHxW", help="Input shape, e.g. 3x32x32."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Per-channel mean, e.g. 0.49,0.48,0.45."),
    std: Optional[str] = typer.Option(None, "--std", help="Per-channel std, e.g. 0.2,0.2,0.2."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", min=1, help="Number of output classes."),
) -> ExitCode:
    """Identify a checkpoint safely: format, hashes, pickle globals, architecture and input spec."""
    options = LoadOptions(arch=arch, allow_globals=tuple(allow_global), trust_torchscript=trust_torchscript,
                          spec_flags=spec_flags(input_size, mean, std, num_classes), device="cpu")
    try:
        intake = inspect_path(path, options)
    except AuditError as exc:
        partial = getattr(exc, "intake", None)
        if partial is not None and not is_stdout(json_out):
            out.print(render_table(partial, exc))
        if json_out is not None:
            # the one error line stays the only stderr line: no "wrote" here
            write_or_stdout(json_out, to_json(inspect_document(partial, exit_code_for(exc), one_line(exc))))
        raise
    if not is_stdout(json_out):
        out.print(render_table(intake))
    if json_out is not None and write_or_stdout(json_out, to_json(inspect_document(intake, ExitCode.PASS, None))):
        err.print(f"wrote {json_out}", markup=False, highlight=False)
    return ExitCode.PASS
