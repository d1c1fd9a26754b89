"""CLI of the agent package: ``dmms tiny-model`` and ``dmms agent run`` (the loop over a VQA set)."""

from __future__ import annotations

import asyncio
import json
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

    agent_app = typer.Typer(no_args_is_help=True, help="The agent loop.")
    app.add_typer(agent_app, name="agent")

    @agent_app.command("run")
    def agent_run(
        model: str = typer.Option(..., help="Checkpoint folder / hub id (local generator) or an "
                                  "OpenAI-compatible base URL http(s)://…/v1 (model name: DMMS_TEACHER__MODEL)."),
        vqa: Path = typer.Option(..., help="VQA set: a folder with vqa.jsonl and its images."),
        out: Path = typer.Option(..., help="New folder for trajectories.jsonl and images/."),
        tools: str | None = typer.Option(None, help="Tool-server base URL (default DMMS_TOOLS__URL)."),
        limit: int | None = typer.Option(None, min=1, help="Only the first N samples."),
    ) -> None:
        """Run the agent loop over a VQA set; write trajectories (JSONL) and images (input + crops)."""
        from components.agent.run import run_vqa
        from components.agent.vqa import VQAError
        from components.common.settings import load_settings

        try:
            summary = asyncio.run(run_vqa(model, vqa, out, load_settings(), tools_url=tools, limit=limit))
        except VQAError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(json.dumps(summary, indent=2))
