"""CLI of the agent package: ``dmms tiny-model`` (and, with the agent-loop issue, ``dmms agent run``)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("tiny-model")
    def tiny_model(
        out: Path = typer.Option(..., help="Folder to write the model, tokenizer and processor."),
        seed: int = typer.Option(0, help="Seed: same seed, same weights."),
    ) -> None:
        """Build a tiny random Qwen2.5-VL (offline, CPU) and save it with save_pretrained."""
        from components.agent.tiny import build_tiny_model

        path = build_tiny_model(out, seed=seed)
        typer.echo(str(path))
