"""CLI of datagen: ``dmms datagen --seed-vqa PATH --teacher oracle|llm --n N --out PATH``.

Runs the teacher through the agent loop against the tool-server (``DMMS_TOOLS__URL``), filters,
balances and publishes DeepMMSearchVQA to the object store (``DMMS_STORAGE__ROOT``); prints the
result as JSON. A corrupt seed file, an unreachable teacher or tool-server, or nothing left after
the filters exit with code 2 and a message saying what to change; no dataset version is written.

    dmms world make --entities 40 --seed 0 --out .dmms/world
    dmms index --corpus .dmms/world/corpus --out .dmms/index && dmms tools serve &
    dmms datagen --seed-vqa .dmms/world/vqa/train --teacher oracle --n 100 --out .dmms/datagen
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("datagen")
    def datagen(
        seed_vqa: Path = typer.Option(..., help="Seed VQA set: a folder with vqa.jsonl and its images."),
        teacher: str = typer.Option("oracle", help="oracle (offline world) or llm (DMMS_TEACHER__*)."),
        n: int = typer.Option(..., min=1, help="Rows of the published dataset."),
        out: Path = typer.Option(..., help="Folder for trajectories.jsonl, stats.json and turns.png."),
        tools: str | None = typer.Option(None, help="Tool-server base URL (default: DMMS_TOOLS__URL)."),
    ) -> None:
        """Generate DeepMMSearchVQA: teacher trajectories -> filters -> 50:50 balance -> dataset."""
        from components.agent.vqa import VQAError
        from components.common.settings import load_settings
        from components.datagen.run import DatagenError, run_datagen

        settings = load_settings(**({"tools": {"url": tools}} if tools else {}))
        try:
            result = run_datagen(settings, seed_vqa, teacher, n, out)
        except (DatagenError, VQAError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(json.dumps(asdict(result), indent=2, default=str))
