"""The client side of `--keep-alive`: find the private server for these settings, start it when
there is none (or only a stale one), and talk to it as a RemoteEngine over its unix socket.

Why a server process rather than a cache of weights on disk: most of a one-shot `dsvl ask` is
`import torch` and building the model (~3.3 of ~3.7 s on tiny-random); only a warm process skips
both. The client imports neither torch nor transformers.

How a call finds its server (keepalive/registry.py names the files):
1. Probe KEY.sock (connect 1 s, status 3 s). An answer with our key: use it.
2. Otherwise take KEY.lock (flock) so that concurrent first calls start one server, probe again
   (another caller may just have started it), end a hung server of ours (one that also misses a
   second, 10 s probe: SIGTERM, then SIGKILL; only a pid whose command line is our server for
   KEY), remove its leftovers, start a new one and
   wait for its "ready" line on a pipe: EOF on that pipe means it died, so a failed start is
   reported at once, with the server's own error (same message and exit code as a local load).
3. A request that cannot connect later (the server idled out between two chat turns, crashed or
   was stopped) starts the server again and is sent once more.

Answers are the server's LocalEngine's, so greedy answers equal a local run's token for token.
Images are loaded here, exactly as a local run loads them (same errors, same URL rules), and sent
as lossless PNG data: URIs. Limits, on purpose: no KV reuse across chat turns (cached_tokens is 0;
each turn re-reads its history), Result.token_ids is empty, and a server keeps the first caller's
`--offline` and environment (HF_HOME, ...) for its life.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

from dsvl_cli.engine.remote import POOL_SIZE, TIMEOUT, RemoteEngine
from dsvl_cli.errors import DsvlError, ExitCode, ModelError, of_kind
from dsvl_cli.keepalive import registry
from dsvl_cli.keepalive.registry import Paths
from dsvl_cli.settings import ModelSettings

# The request could not reach the server, or the connection broke before its answer began: the
# server idled out, crashed or was stopped since the last request; it is started again.
_GONE = (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


SERVER_COMMAND = [sys.executable, "-m", "dsvl_cli.keepalive.server"]  # the server program: server.py


def ensure_server(settings: ModelSettings, keep_alive: float, command: list[str]) -> tuple[Paths, dict]:
    """The answering server for `settings` (started if needed, with `command`: SERVER_COMMAND, or a
    test's) and its status."""
    paths = Paths.for_key(registry.server_key(settings))
    status = registry.probe(paths, touch=True, keep_alive=keep_alive)
    if status is not None:
        return paths, status
    seen = _inode(paths)
    with registry.file_lock(paths.lock):
        if _inode(paths) != seen or seen is None:  # a new socket appeared while we waited: try it
            status = registry.probe(paths, touch=True, keep_alive=keep_alive)
            if status is not None:
                return paths, status
        status = _clear_stale(paths, keep_alive)
        if status is not None:
            return paths, status
        _start(paths, settings, keep_alive, command)
        status = registry.probe(paths, touch=True, keep_alive=keep_alive)
    if status is None:
        raise ModelError(f"the keep-alive server for {settings.model} started but does not answer "
                         f"(log: {paths.log})")
    return paths, status


def _inode(paths: Paths) -> int | None:
    try:
        return paths.socket.stat().st_ino
    except OSError:
        return None


def _clear_stale(paths: Paths, keep_alive: float) -> dict | None:
    """End a hung server of ours and remove what a dead one left (we hold the key's lock).

    A live server of ours gets a second, longer chance to answer first (a busy machine is not a
    hung server); its status then, if it does."""
    state = registry.read_state(paths.state)
    pid = state["pid"] if state else None
    if pid is not None and registry.alive(pid) and registry.is_ours(pid, paths.key):
        status = registry.probe(paths, touch=True, keep_alive=keep_alive, read_timeout=registry.HUNG_S)
        if status is not None:
            return status
        registry.terminate(pid, paths.key)
    paths.socket.unlink(missing_ok=True)
    paths.state.unlink(missing_ok=True)
    return None


def _start(paths: Paths, settings: ModelSettings, keep_alive: float, command: list[str]) -> None:
    """Start the server process and wait for its first line: ready, or the error that stopped it."""
    try:
        cwd = os.getcwd()
    except OSError:  # the working folder was removed
        cwd = str(paths.socket.parent)
    spec = {"key": paths.key, "settings": registry.settings_dict(settings), "identity": registry.identity(settings),
            "cwd": cwd, "keep_alive": keep_alive}
    if paths.log.exists():  # the previous server's log, kept for a post-mortem of a crash
        os.replace(paths.log, paths.log.with_name(paths.log.name + ".1"))
    read_end, write_end = os.pipe()
    try:
        log = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            launcher = subprocess.Popen(
                [*command, registry.MARK, "--status-fd", str(write_end), json.dumps(spec)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_end,), close_fds=True,
                start_new_session=True, cwd=paths.socket.parent, env=_server_env())
        finally:
            os.close(log)
        os.close(write_end)
        write_end = -1
        line = _read_line(read_end)
        launcher.wait()  # it forks the server and exits at once (the server is nobody's zombie)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    _check_ready(line, paths, settings)


def _server_env() -> dict:
    env = registry.python_env()
    # The client applies the user's image byte cap as a local run does; the server decodes our
    # lossless re-encodings, which may be larger than the files they came from.
    env["DSVL_MAX_IMAGE_BYTES"] = str(1 << 30)
    return env


def _read_line(fd: int) -> bytes:
    """The server's first status line; b"" when it died before writing one (EOF)."""
    data = b""
    while not data.endswith(b"\n"):
        piece = os.read(fd, 65536)
        if not piece:
            break
        data += piece
    return data


def _check_ready(line: bytes, paths: Paths, settings: ModelSettings) -> None:
    try:
        message = json.loads(line) if line.strip() else None
    except ValueError:
        message = None
    if isinstance(message, dict) and message.get("ready"):
        return
    error = message.get("error") if isinstance(message, dict) else None
    if not isinstance(error, dict):
        raise ModelError(f"the keep-alive server for {settings.model} exited while starting{_log_tail(paths)} "
                         f"(log: {paths.log})")
    message = str(error.get("message"))
    err = of_kind(error.get("kind"), message) or DsvlError(message)
    err.exit_code = ExitCode(int(error.get("exit_code", ExitCode.FAILURE)))
    raise err


def _log_tail(paths: Paths) -> str:
    try:
        lines = [ln.strip() for ln in paths.log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f": {lines[-1][:200]}" if lines else ""


class KeepAliveEngine(RemoteEngine):
    """The Backend protocol through the private server for `settings` (started if needed)."""

    inline_images = True  # fetched here like a local run does; the server never fetches a URL for us
    png_level = 1  # a local socket: encoding time matters, size hardly
    send_max_side = None  # the server must see the pixels a local run would (no downscale on the way)

    def __init__(self, settings: ModelSettings, keep_alive: float, command: list[str] = SERVER_COMMAND):
        self.settings, self.keep_alive, self.command = settings, keep_alive, command
        self.paths, self.status = ensure_server(settings, keep_alive, command)
        super().__init__(f"http://{registry.HOST}")
        self.name = settings.model  # as the user named it, as a local run reports it

    @property
    def pid(self) -> int:
        return int(self.status["pid"])

    def _new_client(self) -> httpx.Client:
        return registry.socket_client(self.paths.socket, timeout=TIMEOUT, pool=POOL_SIZE)

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        """Send; a server that went away in the meantime is started again and asked once more."""
        try:
            return super()._send(method, path, **kwargs)
        except _GONE:
            pass
        self.paths, self.status = ensure_server(self.settings, self.keep_alive, self.command)
        try:
            return super()._send(method, path, **kwargs)
        except _GONE as exc:
            raise ModelError(f"the keep-alive server for {self.name} does not answer ({type(exc).__name__}; "
                             f"log: {self.paths.log})") from None

    def _named(self, err: DsvlError) -> DsvlError:
        """The server's errors as a local run words them (no "server URL:" prefix)."""
        return err
