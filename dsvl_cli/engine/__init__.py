"""The engine: everything that turns a conversation into an answer, behind one Backend protocol.

`open_backend` is the one way a front end gets an engine: the local model (engine/local.py), or
with `--server` a running `dsvl serve` over HTTP (engine/remote.py). (`--keep-alive`'s client, a
RemoteEngine over a private server's socket, lives above serve: the keepalive package.) Importing
this package imports neither torch nor transformers; loading a model does.
"""

from __future__ import annotations

from collections.abc import Callable

from dsvl_cli.engine.backend import Backend
from dsvl_cli.settings import ModelSettings

__all__ = ["Backend", "open_backend"]


def open_backend(settings: ModelSettings, *, server: str | None = None, api_key: str | None = None,
                 requested_model: str | None = None, on_note: Callable[[str], None] | None = None,
                 prefer_fast: bool = False, verbose: bool = False) -> Backend:
    """The local engine for `settings`, or with `server` a client of that server (asking it for
    `requested_model`: -m as given, None: whatever it serves; `on_note` hears when another model
    answers).

    `prefer_fast`: the caller generates many times (chat, batch, serve), so the static-cache fast
    path pays where it is on by default (CUDA); --compile/--no-compile decides otherwise."""
    if server:
        from dsvl_cli.engine.remote import RemoteEngine

        return RemoteEngine(server, api_key=api_key, model=requested_model, on_note=on_note)
    from dsvl_cli.engine.local import LocalEngine

    return LocalEngine.load(settings, verbose=verbose, prefer_fast=prefer_fast)
