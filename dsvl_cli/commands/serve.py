"""`dsvl serve`: load the model once and answer OpenAI-style requests over HTTP (server.py)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dsvl_cli.options import CommonOptions, shared_options

# The output options and --server belong to the clients (ask, chat, batch): serve reads none of them,
# and a DSVL_SERVER (or DSVL_KEEP_ALIVE) exported for those clients must not stop a server from starting.
@shared_options(exclude=("plain", "json", "stats", "server", "keep_alive"))
def serve(
    opts: CommonOptions,
    host: Annotated[str, typer.Option("--host", envvar="DSVL_HOST", show_envvar=True,
                                      help="Address to listen on (0.0.0.0: every interface; set an API key).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", envvar="DSVL_PORT", show_envvar=True,
                                      help="Port to listen on (0: any free port).")] = 8000,
    max_queue: Annotated[int, typer.Option("--max-queue", envvar="DSVL_MAX_QUEUE", show_envvar=True, min=0,
                                           help="Requests that may wait behind the running batch; more get 429.")]
    = 16,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", envvar="DSVL_BATCH_SIZE", show_envvar=True, min=1,
        help="Most waiting requests answered together in one generate call "
             "[default: 8 on CPU, 16-32 on CUDA by free memory].")] = None,
) -> None:
    """Keep the model warm behind an OpenAI-compatible API (Chat Completions, streaming, images).

    Generation options set the defaults for requests that leave them out. With --api-key (or
    DSVL_API_KEY) every request needs `Authorization: Bearer KEY`. Requests that wait together
    with the same generation settings are answered in one batch (greedy answers are the same).

    \b
    Examples:
      dsvl serve --model tiny-random --port 8000
      dsvl ask --server http://127.0.0.1:8000 photo.jpg "What is in this picture?"
      curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "Hello"}]}'
    """
    from dsvl_cli.errors import DsvlError, guarded
    from dsvl_cli.render import load_backend, note

    with guarded(opts.debug):
        try:
            from dsvl_cli.serve import app as server
        except ImportError as exc:
            raise DsvlError(f"dsvl serve needs {exc.name or 'fastapi and uvicorn'}: "
                            "pip install 'dsvl-cli[serve]'") from None
        sock = server.bind(host, port)  # before loading: a busy port fails fast
        engine = load_backend(opts)
        app = server.create_app(engine, defaults=opts.generation, api_key=opts.api_key, max_queue=max_queue,
                                 max_batch=batch_size)
        console = opts.env.stderr_console()
        shown_host = f"[{host}]" if ":" in host else host
        url = f"http://{shown_host}:{sock.getsockname()[1]}"
        if opts.api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
            note(console, f"warning: listening on {host} without an API key; anyone who can reach it can use it")
        note(console, f"dsvl serve: {engine.name} at {url}/v1 (OpenAI API; Ctrl-C to stop)", style="green")
        server.configure_logging()
        server.make_server(app).run(sockets=[sock])
