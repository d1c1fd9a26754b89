"""CLI of evaluation: ``dmms evaluate`` and ``dmms benchmark convert``.

    dmms benchmark convert okvqa ~/data/okvqa bench/okvqa --limit 2000
    dmms evaluate --model .dmms/models/tiny --benchmarks okvqa=bench/okvqa,world=.dmms/world/test \
        --modes direct,rag --tools http://127.0.0.1:8080
    dmms evaluate --backend openai --endpoint http://vllm:8000/v1 --model Qwen/Qwen2.5-VL-7B-Instruct ...

Bad input (unknown mode, missing benchmark folder, judge not configured) exits 2 with a message.
"""

from __future__ import annotations

from pathlib import Path

import typer

from components.common.tracking import TrackingError


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def register(app: typer.Typer) -> None:
    bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks in the VQA format.")
    app.add_typer(bench_app, name="benchmark")

    @bench_app.command("convert")
    def convert(name: str = typer.Argument(..., help="infoseek, encvqa, simplevqa, dynvqa, okvqa or aokvqa."),
                src: Path = typer.Argument(..., help="Folder with the released annotation files and images."),
                out: Path = typer.Argument(..., help="Empty output folder (vqa.jsonl + images)."),
                limit: int | None = typer.Option(None, help="Keep this many items (deterministic sample)."),
                seed: int = typer.Option(0, help="Seed of the sample.")) -> None:
        """Convert a released benchmark into the VQA format; print its item count and version."""
        from components.evaluate.benchmarks import BenchmarkError, convert_benchmark

        try:
            bench = convert_benchmark(name, src, out, limit, seed)
        except BenchmarkError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"{bench.name}: {len(bench.items)} items, version {bench.version}, at {out}")

    @app.command("evaluate")
    def evaluate_cmd(
        model: str = typer.Option(..., help="Checkpoint folder (local) or served model name (openai)."),
        benchmarks: str = typer.Option(..., help="Comma-separated NAME=FOLDER (or FOLDER) in VQA format."),
        modes: str = typer.Option("direct,rag", help="Comma-separated: direct, rag, agent."),
        backend: str = typer.Option("local", help="local (transformers) or openai (endpoint)."),
        endpoint: str | None = typer.Option(None, help="openai backend: base URL, e.g. http://vllm:8000/v1."),
        tools: str | None = typer.Option(None, help="Tool-server URL (default: DMMS_TOOLS__URL)."),
        limit: int | None = typer.Option(None, help="Items per benchmark (default: DMMS_EVALUATE__LIMIT)."),
        judge: str | None = typer.Option(None, help="rule or llm (default: DMMS_EVALUATE__JUDGE)."),
        out: Path | None = typer.Option(None, help="Output folder (default: DMMS_EVALUATE__OUT_DIR)."),
    ) -> None:
        """Evaluate a model on benchmarks × modes; log to MLflow; write table, plots, HTML report."""
        from components.common.settings import load_settings
        from components.evaluate.benchmarks import BenchmarkError
        from components.evaluate.generate import ModelSpec
        from components.evaluate.run import EvalError, evaluate

        overrides: dict = {}
        if limit is not None:
            overrides["limit"] = limit
        if judge is not None:
            overrides["judge"] = judge
        settings = load_settings(**({"evaluate": overrides} if overrides else {}))
        try:
            spec = ModelSpec(backend=backend, name=model, base_url=endpoint)
            result = evaluate(settings, spec, _split(benchmarks), _split(modes), tools, out)
        except (BenchmarkError, EvalError, TrackingError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(Path(result.files["table_md"]).read_text(), nl=False)
        typer.echo(f"run_id: {result.run_id}\nbenchmarks_version: {result.benchmarks_version}\n"
                   f"report: {result.files['report']}")
