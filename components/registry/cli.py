"""CLI of the registry: ``dmms promote``, ``dmms serve``.

    dmms promote --eval-run <run id> --checkpoint s3://store/checkpoints/run1/final
    dmms promote --rollback
    dmms serve status        # which version the serving object serves (DMMS_SERVING__TARGET)
    dmms serve sync          # point it at the registry's champion

Prints the decision and its reasons; a refused promotion is not an error (exit 0), bad input
(unknown run, no champion to roll back) exits 2 with a message.
"""

from __future__ import annotations

import json

import typer

from components.common.tracking import TrackingError


def register(app: typer.Typer) -> None:
    @app.command("promote")
    def promote_cmd(
        eval_run: str | None = typer.Option(None, help="MLflow run id of the challenger's evaluation."),
        checkpoint: str | None = typer.Option(
            None, help="Object-store URI of the checkpoint (default: the model the eval run evaluated)."),
        manifest_sha256: str | None = typer.Option(None, help="sha256 of the checkpoint's manifest.json."),
        rollback_: bool = typer.Option(False, "--rollback", help="Move champion back to the previous version."),
    ) -> None:
        """Register an evaluated checkpoint as challenger and promote it to champion if it passes the gates."""
        from components.common.settings import load_settings
        from components.common.tracking import client
        from components.registry.promote import promote, rollback
        from components.registry.serving import ServingError

        settings = load_settings()
        try:
            if rollback_:
                old, new = rollback(settings)
                typer.echo(json.dumps({"rolled_back": old, "champion": new}))
                return
            if not eval_run:
                raise TrackingError("pass --eval-run RUN_ID (the run `dmms evaluate` printed) or --rollback")
            uri = checkpoint or client(settings).get_run(eval_run).data.tags.get("dmms.model")
            decision = promote(settings, eval_run, uri or "", manifest_sha256)
        except (TrackingError, ServingError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(decision.model_dump_json(indent=2))

    serve_app = typer.Typer(no_args_is_help=True, help="The champion's serving object (KServe or vLLM).")
    app.add_typer(serve_app, name="serve")

    @serve_app.command("status")
    def serve_status() -> None:
        """Which model-registry version the serving object serves, from which checkpoint, and if it is ready."""
        from components.common.settings import load_settings
        from components.registry.serving import ServingError, serving_status

        try:
            typer.echo(json.dumps(serving_status(load_settings()), indent=2))
        except ServingError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    @serve_app.command("sync")
    def serve_sync() -> None:
        """Point the serving object at the registry's current champion."""
        from components.common.settings import load_settings
        from components.registry.promote import sync_serving
        from components.registry.serving import ServingError

        try:
            body = sync_serving(load_settings())
        except (ServingError, TrackingError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo("serving target is none: nothing to sync" if body is None else
                   json.dumps(body["metadata"].get("annotations", {})))
