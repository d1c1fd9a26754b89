"""CLI of the SFT step: ``dmms sft --data URI --model PATH --out URI``.

Trains on a DeepMMSearchVQA version (a version URI, or a dataset name → its newest version), from
``--model`` (default: ``DMMS_MODEL__NAME_OR_PATH``; the tiny profile builds the tiny model if
missing), publishing ``<out>/step-N/`` checkpoints and ``<out>/final/`` (LoRA merged). Run it
again with the same ``--out`` after a crash and it resumes from the newest valid step checkpoint.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("sft")
    def sft(
        data: str = typer.Option(..., help="Dataset version URI, or a dataset name (newest version)."),
        out: str = typer.Option(..., help="Object-store prefix for checkpoints, e.g. .dmms/store/checkpoints/run1."),
        model: str = typer.Option(None, help="Base model folder or hub id; default DMMS_MODEL__NAME_OR_PATH."),
        work_dir: str = typer.Option(None, help="Local scratch folder (default: a temporary one)."),
    ) -> None:
        """Supervised fine-tuning (TRL SFTTrainer, LoRA by default), resumable, tracked in MLflow."""
        from components.common.settings import load_settings
        from components.sft.train import run_sft

        settings = load_settings()
        result = run_sft(settings, data, model or "", out, work_dir=work_dir)
        typer.echo(result.model_dump_json(indent=2))
