"""CLI of the pipelines: ``dmms run``, ``dmms compile``, ``dmms submit``, ``dmms schedule``.

    dmms run --pipeline smoke [--param datagen_n=4]       KFP local runner, embedded default
    dmms compile --out build/pipelines                     YAML of every pipeline
    dmms submit --pipeline full [--run-name NAME] [--host http://...]   one run on KFP_HOST
    dmms schedule --pipeline retrain --cron "0 3 * * 0"    a recurring run on KFP_HOST

An entry point, not a core: it may import ``pipelines``. Bad input (unknown pipeline or parameter,
no or unreachable KFP host, bad cron) exits 2 with a message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from pipelines.catalog import NAMES


def _params(name: str, pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs typed like the pipeline's defaults."""
    from components.common.settings import load_settings
    from pipelines.catalog import build

    if not pairs:
        return {}
    defaults = build(name, load_settings(), cluster=False).params
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in defaults:
            raise typer.BadParameter(f"{pair!r}: use KEY=VALUE with KEY one of {', '.join(sorted(defaults))}")
        kind = type(defaults[key])
        try:
            out[key] = kind(value)
        except ValueError:
            raise typer.BadParameter(f"{key} must be a {kind.__name__}, got {value!r}") from None
    return out


SYNTHETIC_ENV = "DMMS_DATAGEN__ALLOW_SYNTHETIC"


def _cluster_settings(pipeline: str, params: dict[str, Any], allow_synthetic: bool):
    """Settings to compile ``pipeline`` with, after :func:`pipelines.catalog.check_params`; with
    ``allow_synthetic`` every pod of the run may use the oracle teacher."""
    from components.common.settings import load_settings
    from pipelines.catalog import check_params

    check_params(pipeline, params, allow_synthetic)
    settings = load_settings()
    if allow_synthetic:
        settings.pipelines.cluster_env = {**settings.pipelines.cluster_env, SYNTHETIC_ENV: "true"}
    return settings


def _check_name(name: str) -> str:
    if name not in NAMES:
        raise typer.BadParameter(f"unknown pipeline {name!r}: choose one of {', '.join(NAMES)}")
    return name


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    pipeline_opt = typer.Option("smoke", "--pipeline", "-p", callback=_check_name, help=", ".join(NAMES))
    param_opt = typer.Option([], "--param", help="Pipeline parameter KEY=VALUE (repeatable).")
    synthetic_opt = typer.Option(False, "--allow-synthetic",
                                 help="Let `full` run on the offline world with the oracle teacher (a smoke run).")

    @app.command("run")
    def run_cmd(pipeline: str = pipeline_opt, param: list[str] = param_opt,
                verbose: bool = typer.Option(False, "--verbose", "-v", envvar="DMMS_VERBOSE",
                                             help="Stream every step's output instead of one line per step."),
                allow_synthetic: bool = synthetic_opt) -> None:
        """Run a pipeline end to end with the KFP local runner; print the results table."""
        import os

        from components.common.settings import load_settings
        from pipelines.catalog import ParamsError, check_params
        from pipelines.local import LocalRunError, run_local

        params = _params(pipeline, param)
        try:
            check_params(pipeline, params, allow_synthetic)
        except ParamsError as exc:
            _fail(exc)
        if allow_synthetic:  # the steps run in subprocesses that read their settings from the env
            os.environ[SYNTHETIC_ENV] = "true"
        try:
            result = run_local(load_settings(), pipeline, params, verbose=verbose)
        except LocalRunError as exc:
            _fail(exc)
        from pipelines.results import format_table

        if result.table_md:
            typer.echo("\nThe RL checkpoint, per benchmark and mode (accuracy %, 95% CI, n):")
            typer.echo(result.table_md, nl=False)
        if result.results.get("rows"):
            typer.echo("\nBefore and after training, on the same questions:")
            typer.echo(format_table(result.results), nl=False)
        elif result.decision:
            typer.echo(f"promotion: {result.decision}")
        typer.echo(f"\nMLflow: {result.tracking_uri} (eval run {result.eval_run_id}; report at artifact "
                   f"evaluation/report.html)\nresults: {result.results_path}\nstep logs: {result.log_path}\n"
                   f"KFP outputs: {result.pipeline_root}")

    @app.command("compile")
    def compile_cmd(out: Path = typer.Option(Path("build/pipelines"), help="Folder for the YAML files.")) -> None:
        """Compile every pipeline to KFP v2 YAML."""
        from components.common.settings import load_settings
        from pipelines.compile import compile_all

        for name, path in compile_all(load_settings(), out).items():
            typer.echo(f"{name}: {path}")

    @app.command("submit")
    def submit_cmd(pipeline: str = typer.Option("full", "--pipeline", "-p", callback=_check_name),
                   run_name: str | None = typer.Option(None, help="KFP run name (default dmms-PIPELINE)."),
                   host: str | None = typer.Option(None, help="KFP API URL (default: KFP_HOST)."),
                   param: list[str] = param_opt, allow_synthetic: bool = synthetic_opt) -> None:
        """Submit one run of a pipeline to Kubeflow Pipelines."""
        from pipelines.catalog import ParamsError
        from pipelines.submit import SubmitError, submit

        params = _params(pipeline, param)
        try:
            settings = _cluster_settings(pipeline, params, allow_synthetic)
            run_id = submit(settings, pipeline, run_name, params, host)
        except (SubmitError, ParamsError) as exc:
            _fail(exc)
        typer.echo(f"run_id: {run_id}")

    @app.command("schedule")
    def schedule_cmd(pipeline: str = typer.Option("retrain", "--pipeline", "-p", callback=_check_name),
                     cron: str = typer.Option(..., help='Cron, 5 fields, e.g. "0 3 * * 0".'),
                     job_name: str | None = typer.Option(None, help="Recurring run name."),
                     host: str | None = typer.Option(None, help="KFP API URL (default: KFP_HOST)."),
                     param: list[str] = param_opt, allow_synthetic: bool = synthetic_opt) -> None:
        """Create a recurring run of a pipeline on Kubeflow Pipelines."""
        from pipelines.catalog import ParamsError
        from pipelines.submit import SubmitError, schedule

        params = _params(pipeline, param)
        try:
            settings = _cluster_settings(pipeline, params, allow_synthetic)
            job_id = schedule(settings, pipeline, cron, job_name, params, host)
        except (SubmitError, ParamsError) as exc:
            _fail(exc)
        typer.echo(f"recurring_run_id: {job_id}")
