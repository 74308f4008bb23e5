"""`dsvl serve`: load the model once and answer OpenAI-style requests over HTTP (serve/app.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from dsvl_cli.options import CommonOptions, shared_options

def _opt(*decls: str, env: str, help: str, **kw):
    return typer.Option(*decls, envvar=env, show_envvar=True, help=help, **kw)


Host = Annotated[str, _opt("--host", env="DSVL_HOST",
                           help="Address to listen on (0.0.0.0: every interface; set an API key).")]
Port = Annotated[int, _opt("--port", env="DSVL_PORT", min=0, max=65535, help="Port to listen on (0: any free port).")]
MaxQueue = Annotated[int, _opt("--max-queue", env="DSVL_MAX_QUEUE", min=0,
                               help="Requests that may wait for a free row; more get 429.")]
BatchSize = Annotated[Optional[int], _opt(
    "--batch-size", env="DSVL_BATCH_SIZE", min=1,
    help="Most requests decoding at once (each joins at the next step and leaves when its answer ends) "
         "[default: 16 on CPU, 32-64 on CUDA by free memory].")]
CacheMemory = Annotated[Optional[str], _opt(
    "--cache-memory", env="DSVL_CACHE_MEMORY",
    help="Memory for the prefix cache (KV of recent prompts and answers, e.g. 2GiB) "
         "[default: a fifth of free GPU memory; on CPU a tenth of free RAM, at most 2GiB].")]
KeyFile = Annotated[Optional[Path], _opt("--api-key-file", env="DSVL_API_KEY_FILE",
                                         help="Read the API key from the first line of this file (not visible in ps).")]
AllowPrivate = Annotated[bool, _opt("--allow-private-urls", env="DSVL_ALLOW_PRIVATE_URLS",
                                    help="Let image_url reach private and loopback addresses (trusted clients only).")]
MediaDomains = Annotated[Optional[str], _opt(
    "--allowed-media-domains", env="DSVL_ALLOWED_MEDIA_DOMAINS",
    help="Comma-separated hosts image_url may fetch from (*.example.com: subdomains too) [default: any public host].")]
NoUrls = Annotated[bool, _opt("--no-url-images", env="DSVL_NO_URL_IMAGES",
                              help="Never fetch image URLs; accept images as data: URIs only.")]
AllowedHosts = Annotated[Optional[str], _opt(
    "--allowed-hosts", env="DSVL_ALLOWED_HOSTS",
    help="Comma-separated Host names to answer besides localhost names when bound to loopback "
         "(your reverse proxy's name; * for any).")]
MaxImages = Annotated[int, _opt("--max-images", env="DSVL_MAX_IMAGES", min=0,
                                help="Most distinct images per request.")]
MaxPixels = Annotated[int, _opt("--max-image-pixels", env="DSVL_MAX_IMAGE_PIXELS", min=1,
                                help="Most pixels per image (a JPEG counts after reduced-scale decoding).")]
MaxImageBytes = Annotated[int, _opt("--max-image-bytes", env="DSVL_SERVE_MAX_IMAGE_BYTES", min=1,
                                    help="Most bytes per image, fetched or sent as a data: URI.")]
MaxBody = Annotated[int, _opt("--max-body-bytes", env="DSVL_MAX_BODY_BYTES", min=1,
                              help="Most bytes per request body, data: URIs included (larger: 413).")]
MaxText = Annotated[int, _opt("--max-text-chars", env="DSVL_MAX_TEXT_CHARS", min=1,
                              help="Most characters of text per request, all messages together.")]
FetchTimeout = Annotated[float, _opt("--fetch-timeout", env="DSVL_FETCH_TIMEOUT",
                                     help="Seconds one image URL may take in all (connect, redirects, body).")]
Grace = Annotated[float, _opt("--grace-period", env="DSVL_GRACE_PERIOD", min=0.0,
                              help="On SIGINT/SIGTERM, seconds open requests may finish before they are cut.")]
StoreBytes = Annotated[int, _opt("--response-store-bytes", env="DSVL_RESPONSE_STORE_BYTES", min=0,
                                 help="Memory for stored /v1/responses (previous_response_id), least recently "
                                      "used out first; 0 keeps none.")]
MaxConnections = Annotated[int, _opt("--max-connections", env="DSVL_MAX_CONNECTIONS", min=1,
                                     help="Open connections beyond this are closed at once.")]


# The output options, --exact-pixels and --server belong to the clients (ask, chat, batch): serve reads
# none of them, and a DSVL_SERVER (or DSVL_KEEP_ALIVE) exported for those clients must not stop a
# server from starting.
@shared_options(exclude=("plain", "json", "stats", "server", "exact_pixels", "keep_alive", "schema",
                         "regex", "choices", "logprobs"))
def serve(ctx: typer.Context, opts: CommonOptions, host: Host = "127.0.0.1", port: Port = 8000, max_queue: MaxQueue = 1024,
          batch_size: BatchSize = None, api_key_file: KeyFile = None, allow_private_urls: AllowPrivate = False,
          allowed_media_domains: MediaDomains = None, no_url_images: NoUrls = False,
          allowed_hosts: AllowedHosts = None, max_images: MaxImages = 8, max_image_pixels: MaxPixels = 4096 * 4096,
          max_image_bytes: MaxImageBytes = 10 * 1024 * 1024, max_body_bytes: MaxBody = 48 * 1024 * 1024,
          max_text_chars: MaxText = 64_000,
          fetch_timeout: FetchTimeout = 20.0, max_connections: MaxConnections = 512,
          grace_period: Grace = 10.0, response_store_bytes: StoreBytes = 256 * 1024 * 1024,
          cache_memory: CacheMemory = None) -> None:
    """Keep the model warm behind an OpenAI-compatible API (Chat Completions, Responses, streaming, images).

    Generation options set the defaults for requests that leave them out. With --api-key,
    DSVL_API_KEY or --api-key-file every request needs `Authorization: Bearer KEY`. Requests that
    arrive while others run join them at the next decode step; prompts and pictures seen before are
    reused from the prefix and image caches; GET /metrics reports it all. Image URLs are
    fetched from public addresses only, unless told otherwise (README: Security).

    \b
    Examples:
      dsvl serve --model tiny-random --port 8000
      dsvl ask --server http://127.0.0.1:8000 photo.jpg "What is in this picture?"
      curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "Hello"}]}'
    """
    from dsvl_cli.errors import DsvlError, guarded
    from dsvl_cli.render import load_backend, note
    from dsvl_cli.serve import config
    from dsvl_cli.serve.limits import ServeLimits
    from dsvl_cli.setup.fit import parse_size

    source = ctx.get_parameter_source
    with guarded(opts.debug):
        flag = (opts.api_key or "") if source("api_key").name == "COMMANDLINE" else None
        key = config.api_key(flag, os.environ.get("DSVL_API_KEY"), api_key_file)
        limits = ServeLimits(max_images=max_images, max_image_bytes=max_image_bytes, max_body_bytes=max_body_bytes,
                             max_image_pixels=max_image_pixels, max_text_chars=max_text_chars,
                             fetch_timeout_s=fetch_timeout)
        policy = config.media_policy(allow_private_urls, allowed_media_domains, no_url_images)
        cache_bytes = parse_size(cache_memory, "--cache-memory") if cache_memory is not None else None
        try:
            from dsvl_cli.serve import app as server
        except ImportError as exc:
            raise DsvlError(f"dsvl serve needs {exc.name or 'fastapi and uvicorn'}: "
                            "pip install 'dsvl-cli[serve]'") from None
        sock = server.bind(host, port)  # before loading: a busy port fails fast
        engine = load_backend(opts)
        app = server.create_app(engine, defaults=opts.generation, api_key=key, max_queue=max_queue,
                                max_batch=batch_size, limits=limits, policy=policy,
                                allowed_hosts=config.allowed_hosts(host, allowed_hosts),
                                response_store_bytes=response_store_bytes, cache_bytes=cache_bytes)
        console = opts.env.stderr_console()
        shown_host = f"[{host}]" if ":" in host else host
        url = f"http://{shown_host}:{sock.getsockname()[1]}"
        if key is None and not config.is_loopback(host):
            note(console, f"warning: listening on {host} without an API key; anyone who can reach it can use it")
        note(console, f"dsvl serve: {engine.name} at {url}/v1 (OpenAI API; Ctrl-C to stop)", style="green")
        server.configure_logging()
        server.make_server(app, grace_period, max_connections=max_connections).run(sockets=[sock])
