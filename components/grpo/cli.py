"""CLI of the GRPO step: ``dmms grpo --data URI --model PATH --out URI``.

    dmms grpo --data .dmms/world/vqa/train --model .dmms/store/checkpoints/sft1/final \
        --out .dmms/store/checkpoints/grpo1

Settings (profile, tools URL, judge, GRPO hyperparameters) come from ``DMMS_*`` / the profile;
the same core runs under ``accelerate launch -m components.grpo.train`` on several GPUs. Bad
input (no dataset, a finished --out, a judge not configured) exits 2 with a message.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("grpo")
    def grpo_cmd(
        data: str = typer.Option(..., help="VQA set folder, or DeepMMSearchVQA version (name or URI)."),
        model: str = typer.Option(..., help="Policy checkpoint folder or hub id (the SFT final checkpoint)."),
        out: str = typer.Option(..., help="Object-store prefix for step-N/ and final/ checkpoints."),
        work_dir: str | None = typer.Option(None, help="Local scratch folder (default: a temporary one)."),
    ) -> None:
        """Online GRPO with multi-turn rollouts through the tool-server; resumes from <out>/step-N."""
        from components.common.settings import load_settings
        from components.grpo.servers import rollout_server
        from components.grpo.train import run_grpo

        try:
            # On a cluster with DMMS_GRPO__LAUNCH_ROLLOUT_SERVERS=true this starts the vLLM rollout
            # server for the run and deletes it afterwards; otherwise it changes nothing.
            with rollout_server(load_settings()) as settings:
                result = run_grpo(settings, data, model, out, work_dir=work_dir)
        except ValueError as exc:  # settings, dataset or prompt problems: the user's to fix
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"final checkpoint {result.final_uri} (step {result.global_step}, "
                   f"resumed from {result.resumed_from or 'scratch'})")
