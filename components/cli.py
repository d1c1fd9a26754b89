"""``dmms``: the one command line in front of every step.

Each step's core lives in ``components/<step>/``; its CLI is a small typer app in
``components/<step>/cli.py`` registered here, so ``dmms --help`` lists everything.

    dmms config show            resolved settings, secrets masked
    dmms tiny-model --out DIR   build the tiny random Qwen2.5-VL

Settings errors exit with code 2 and a message naming the variable to change.
"""

from __future__ import annotations

import sys

import typer

from components.common.logging import setup_logging
from components.common.settings import SettingsError, dump_yaml, load_settings
from components.common.storage import StorageError

USER_ERRORS = (SettingsError, StorageError, FileNotFoundError, FileExistsError, NotADirectoryError)

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.split("\n\n")[0])
config_app = typer.Typer(no_args_is_help=True, help="Inspect settings.")
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show() -> None:
    """Print the resolved settings as YAML (secrets masked)."""
    typer.echo(dump_yaml(load_settings()), nl=False)


_registered = False


def _register() -> None:
    """Attach the steps' own typer apps (each module defines ``register(app)``); idempotent."""
    global _registered
    if _registered:
        return
    _registered = True
    from components.agent import cli as agent_cli

    agent_cli.register(app)
    from components.agent import judge_cli; judge_cli.register(app)  # noqa: E702, I001
    from components.search import cli as search_cli; search_cli.register(app)  # noqa: E702, I001
    from components.sft import cli as sft_cli; sft_cli.register(app)  # noqa: E702, I001
    from components.world import cli as world_cli; world_cli.register(app)  # noqa: E702, I001
    from components.evaluate import cli as evaluate_cli; evaluate_cli.register(app)  # noqa: E702, I001
    from components.registry import cli as registry_cli; registry_cli.register(app)  # noqa: E702, I001
    from components.grpo import cli as grpo_cli; grpo_cli.register(app)  # noqa: E702, I001
    from components.datagen import cli as datagen_cli; datagen_cli.register(app)  # noqa: E702, I001
    from pipelines import cli as pipelines_cli; pipelines_cli.register(app)  # noqa: E702, I001  (entry point, not a core)


def main() -> None:
    setup_logging()
    try:
        _register()
        app(standalone_mode=True)
    except USER_ERRORS as exc:
        # Bad input is the user's to fix: say what is wrong, no traceback.
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
