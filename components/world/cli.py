"""CLI of the offline world: ``dmms world make --entities N --seed S --out PATH``.

Writes the corpus, the VQA splits and ``world.json`` (see :mod:`components.world.make`) and prints
the summary as JSON. Bad arguments exit with code 2 and a message saying what to change.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    world_app = typer.Typer(no_args_is_help=True, help="The offline world (corpus + VQA splits).")
    app.add_typer(world_app, name="world")

    @world_app.command("make")
    def make(
        out: Path = typer.Option(..., help="Folder to write (new, empty, or a previous world)."),
        entities: int = typer.Option(200, help="Number of entities (at least 5)."),
        seed: int = typer.Option(0, help="Seed: same seed, byte-identical files."),
    ) -> None:
        """Make the offline world: corpus/, vqa/{train,val,test}/ and world.json under OUT."""
        from components.world.make import WorldError, make_world

        try:
            summary = make_world(out, n_entities=entities, seed=seed)
        except WorldError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(summary.model_dump_json(indent=2))
