"""CLI of the search package: build an index, serve it.

    dmms index build --corpus PATH --out PATH              # local folders or s3:// URIs
    dmms tools serve --index PATH [--host H] [--port P]     # uvicorn; 127.0.0.1:8080, DMMS_TOOLS__WORKERS processes
    dmms tools ground-serve --model DIR [--host H] [--port P]   # the grounding service (GroundingDINO)
    dmms tools reload [--url URL]                            # the tool-server re-resolves its index alias

Host, port and the rest come from the settings (``DMMS_TOOLS__*``); flags override them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile

import typer

from components.common.settings import load_settings

log = logging.getLogger(__name__)


def _tcp_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening socket, created as TCP explicitly: uvicorn's own (``socket.socket(family)``,
    protocol 0) makes asyncio skip TCP_NODELAY on every accepted connection, and Nagle's algorithm
    then holds each response ~40 ms (measured: /healthz 44 ms at 2 workers against 0.8 ms at 1).
    ``reuse_port``: one of several sockets on the same port (SO_REUSEPORT), see :class:`_OwnSocketWorkers`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"error: cannot listen on {host}:{port} ({exc}); set DMMS_TOOLS__HOST / DMMS_TOOLS__PORT") from None
    sock.set_inheritable(True)
    return sock


def _own_socket_workers(config: object, host: str, port: int) -> object:
    """uvicorn's worker supervisor, with each worker given its OWN listening socket on the port.

    Why: with one shared socket every idle worker wakes for a new connection and asyncio accepts all
    that are pending at once, so a burst of connections (a client opening its pool: the agent loop's
    32 trajectories) went mostly to one worker (CPU split 0.59 s / 0.16 s in bench/rollout.py), and
    keep-alive pins each client to its worker. With SO_REUSEPORT sockets the kernel spreads new
    connections over the workers' sockets by address hash. A restarted worker gets a fresh socket;
    the parent's copy of a dead worker's socket closes with its process object. Sockets are
    made where uvicorn asks for them (its ``sockets`` attribute, read once per worker it starts).
    """
    from uvicorn.supervisors import Multiprocess

    class OwnSocketWorkers(Multiprocess):
        @property
        def sockets(self) -> list[socket.socket]:
            return [_tcp_socket(host, port, reuse_port=True)]

        @sockets.setter
        def sockets(self, _value: list[socket.socket]) -> None:
            pass

    # the port is checked (and refused with a message) before any worker starts
    _tcp_socket(host, port, reuse_port=True).close()
    return OwnSocketWorkers(config, sockets=[])


def register(app: typer.Typer) -> None:
    index_app = typer.Typer(no_args_is_help=True, help="Build search indexes.")
    tools_app = typer.Typer(no_args_is_help=True, help="Run the search tool-server.")
    app.add_typer(index_app, name="index")
    app.add_typer(tools_app, name="tools")

    @index_app.command("build")
    def build(
        corpus: str = typer.Option(..., help="Corpus folder or s3:// prefix (docs.jsonl, images.jsonl, images)."),
        out: str = typer.Option(..., help="Index folder or s3:// prefix to write."),
    ) -> None:
        """Build the text (tantivy BM25) and image indexes of a corpus."""
        from components.search.image_index import ImageIndexError
        from components.search.index import build_index
        from components.search.text_index import IndexFormatError

        try:
            manifest = build_index(corpus, out, load_settings())
        except (IndexFormatError, ImageIndexError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(json.dumps(manifest))

    @tools_app.command("serve")
    def serve(
        index: str | None = typer.Option(None, help="Index folder or s3:// prefix (default: DMMS_TOOLS__INDEX)."),
        host: str | None = typer.Option(None, help="Bind address (default: DMMS_TOOLS__HOST, 127.0.0.1)."),
        port: int | None = typer.Option(None, help="Port (default: DMMS_TOOLS__PORT, 8080)."),
    ) -> None:
        """Serve text and image search over a built index."""
        import uvicorn

        from components.search.app import create_app

        overrides = {k: v for k, v in {"index": index, "host": host, "port": port}.items() if v is not None}
        settings = load_settings(tools=overrides) if overrides else load_settings()
        t = settings.tools
        log.info("tool-server on http://%s:%d serving %s (%d worker%s)", t.host, t.port, t.index,
                 t.workers, "s" if t.workers > 1 else "")
        if t.workers == 1:
            uvicorn.run(create_app(settings, t.index, serving=True), host=t.host, port=t.port, log_config=None,
                        timeout_graceful_shutdown=10)
            return
        # N processes: each builds its app from the environment (the flags are passed on through it),
        # and Prometheus counts in a shared folder so /metrics adds up every worker
        os.environ.update({"DMMS_TOOLS__INDEX": t.index, "DMMS_TOOLS__HOST": t.host, "DMMS_TOOLS__PORT": str(t.port)})
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="dmms-metrics-"))
        config = uvicorn.Config("components.search.app:app_from_env", factory=True, workers=t.workers,
                                host=t.host, port=t.port, log_config=None, timeout_graceful_shutdown=10)
        _own_socket_workers(config, t.host, t.port).run()

    @tools_app.command("ground-serve")
    def ground_serve(
        model: str = typer.Option(..., help="Local GroundingDINO checkpoint folder (e.g. grounding-dino-tiny)."),
        host: str = typer.Option("127.0.0.1", help="Bind address (0.0.0.0 in its pod, behind a NetworkPolicy)."),
        port: int = typer.Option(8000, help="Port."),
    ) -> None:
        """Serve GroundingDINO for referring-expression crops (components/search/grounding_service.py)."""
        import uvicorn

        from components.search.grounding import GroundingDinoGrounder
        from components.search.grounding_service import create_grounding_app

        settings = load_settings()
        app = create_grounding_app(GroundingDinoGrounder(model, device=settings.model.device))
        log.info("grounding service on http://%s:%d (%s)", host, port, model)
        uvicorn.run(app, host=host, port=port, log_config=None, timeout_graceful_shutdown=10)

    @tools_app.command("reload")
    def reload(url: str | None = typer.Option(None, help="Tool-server URL (default: DMMS_TOOLS__URL).")) -> None:
        """Ask the tool-server to serve the version its index alias names now (POST /admin/reload)."""
        import httpx

        settings = load_settings()
        token = settings.tools.token.get_secret_value() if settings.tools.token else None
        try:
            resp = httpx.post((url or settings.tools.url).rstrip("/") + "/admin/reload", timeout=300,
                              headers={"Authorization": f"Bearer {token}"} if token else {})
        except httpx.HTTPError as exc:
            typer.echo(f"error: {url or settings.tools.url} did not answer ({type(exc).__name__})", err=True)
            raise typer.Exit(2) from None
        if resp.status_code != 200:
            typer.echo(f"error: HTTP {resp.status_code}: {resp.text[:500]}", err=True)
            raise typer.Exit(2)
        typer.echo(resp.text)
