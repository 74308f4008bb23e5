"""`--keep-alive`: where the private servers live, how they are named, found, probed and ended.

A keep-alive server is one `dsvl serve` app (keepalive/server.py) for one model and its load settings,
listening on a unix socket in `DSVL_HOME/run/` (folder 0700, socket and files 0600: only this user
can connect; no TCP port). Its files, all named by the settings' key:
  KEY.sock   the socket          KEY.json  its state (pid, model, ...), written once it listens
  KEY.lock   flock: one starter  KEY.log   its stdout/stderr (kept after it exits; the one before is KEY.log.1)

The key hashes what decides which weights answer: dsvl's version, the model (aliases expanded,
local folders made absolute), revision, device, dtype, quantization and compile. Another value of
any of them gets another server; `--offline` and generation options do not (they change no weights).

This module is what the client (keepalive/client.py), the server and `dsvl ps`/`dsvl stop`
share: no httpx, torch or fastapi at import. Limits: POSIX only (AF_UNIX, flock); a DSVL_HOME
whose socket path would pass the OS limit (~104 bytes) is refused with a clear error; `--device
auto` and `--device cpu` are different keys even where they pick the same device (telling them
apart would import torch in every client).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dsvl_cli import __version__
from dsvl_cli.engine.loading import HUB_ALIASES
from dsvl_cli.errors import UsageError
from dsvl_cli.settings import ModelSettings

MAX_SOCKET_PATH = 103  # sun_path is 104 bytes on macOS, 108 on Linux, NUL included
PROBE_CONNECT_S = 1.0  # a live server accepts at once; a missing or dead one is refused at once
PROBE_READ_S = 3.0  # a live server answers its status in milliseconds; past this it may be hung
HUNG_S = 10.0  # the second chance a live server of ours gets before it is replaced
MARK = "--dsvl-keep-alive-server"  # on every keep-alive server's command line (ps, stop)


def run_dir(create: bool = True) -> Path:
    """`DSVL_HOME/run`, mode 0700 and ours (refused otherwise: a socket there must be private)."""
    from dsvl_cli.engine.runtime import dsvl_home

    if os.name != "posix":
        raise UsageError("--keep-alive needs unix sockets (Linux, macOS); use `dsvl serve` and --server here")
    folder = dsvl_home() / "run"
    if create:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--keep-alive: cannot create {folder}: {exc.strerror or exc}") from None
    if folder.exists():
        st = folder.stat()
        if st.st_uid != os.getuid():
            raise UsageError(f"--keep-alive: {folder} belongs to another user; set DSVL_HOME to a folder of yours")
        if st.st_mode & 0o077:
            folder.chmod(0o700)
    return folder


@dataclass(frozen=True)
class Paths:
    key: str
    socket: Path
    state: Path
    lock: Path
    log: Path

    @classmethod
    def for_key(cls, key: str, folder: Path | None = None) -> Paths:
        folder = folder or run_dir()
        paths = cls(key, folder / f"{key}.sock", folder / f"{key}.json", folder / f"{key}.lock", folder / f"{key}.log")
        if len(os.fsencode(paths.socket)) > MAX_SOCKET_PATH:
            raise UsageError(f"--keep-alive: the socket path {paths.socket} is longer than unix sockets allow "
                             f"({MAX_SOCKET_PATH} bytes); set DSVL_HOME to a shorter folder")
        return paths


def identity(settings: ModelSettings) -> dict:
    """The load settings that decide which weights answer, normalised (see the module docstring)."""
    model = HUB_ALIASES.get(settings.model, settings.model)
    folder = Path(model).expanduser()
    if folder.is_dir():
        model = str(folder.resolve())
    return {"version": __version__, "model": model, "revision": settings.revision, "device": settings.device,
            "dtype": settings.dtype, "quantize": settings.quantize, "compile": settings.compile}


def server_key(settings: ModelSettings) -> str:
    blob = json.dumps(identity(settings), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def settings_dict(settings: ModelSettings) -> dict:
    return dataclasses.asdict(settings)


# -- state files ---------------------------------------------------------------------------------

def read_state(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def all_states() -> list[tuple[Paths, dict | None]]:
    """Every server that wrote a state file, oldest first (some may be dead: see `probe`)."""
    folder = run_dir(create=False)
    if not folder.is_dir():
        return []
    found = []
    for state in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime if p.exists() else 0):
        found.append((Paths.for_key(state.stem, folder), read_state(state)))
    return found


def remove_files(paths: Paths, pid: int | None) -> None:
    """Remove a dead server's socket and state; only while the state still names `pid` (a new
    server of the same key may have replaced them)."""
    state = read_state(paths.state)
    if state is not None and pid is not None and state["pid"] != pid:
        return
    for path in (paths.socket, paths.state):
        path.unlink(missing_ok=True)


@contextmanager
def file_lock(path: Path, *, wait: bool = True):
    """flock on `path`: released by the kernel if the holder dies, so it is never stale.
    Yields False without waiting when `wait` is off and another process holds it."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


# -- processes -----------------------------------------------------------------------------------

def alive(pid: int) -> bool:
    """The process exists and is not a zombie (psutil: /proc on Linux, sysctl on macOS)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # access denied: it exists
        return True


def is_ours(pid: int, key: str) -> bool:
    """`pid` runs the keep-alive server for `key` (pids get reused: never signal a stranger)."""
    import psutil

    try:
        cmdline = psutil.Process(pid).cmdline()
    except psutil.Error:  # gone, a zombie, or not ours to read
        return False
    return MARK in cmdline and any(key in arg for arg in cmdline)


def wait_gone(pid: int, timeout: float) -> bool:
    """Poll (bounded) until `pid` has exited; True if it did."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def terminate(pid: int, key: str, *, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; only a process that is our server for `key`."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not alive(pid) or not is_ours(pid, key):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_gone(pid, wait):
            return


# -- talking to one ------------------------------------------------------------------------------

HOST = "localhost"  # what the URLs and the Host header say; the socket path decides where they go


def socket_client(socket_path: Path | str, *, timeout, pool: int = 1):
    """An httpx Client whose `http://localhost/...` requests go to the unix socket `socket_path`.

    httpx's own transport (`uds=`) opens the AF_UNIX connection; pooling, timeouts and streaming
    are httpx's. trust_env is off: an HTTP(S)_PROXY or .netrc meant for the network must not apply."""
    import httpx

    transport = httpx.HTTPTransport(uds=str(socket_path), limits=httpx.Limits(
        max_connections=None, max_keepalive_connections=pool))
    return httpx.Client(transport=transport, base_url=f"http://{HOST}", timeout=timeout, trust_env=False)


def probe(paths: Paths, *, touch: bool = False, keep_alive: float | None = None,
          read_timeout: float = PROBE_READ_S) -> dict | None:
    """The server's status, or None if none answers at `paths.socket` within the probe timeouts.

    `touch` counts as activity (a client is about to send work); `keep_alive` sets the idle time
    from now on (the last client's value wins, as in ollama). `dsvl ps` does neither."""
    import httpx

    if not paths.socket.exists():
        return None
    params = {"touch": "1"} if touch else {}
    if keep_alive is not None:
        params["keep_alive"] = repr(float(keep_alive))
    with socket_client(paths.socket, timeout=httpx.Timeout(read_timeout, connect=PROBE_CONNECT_S)) as client:
        try:
            response = client.get("/dsvl/status", params=params)
            status = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
    return status if isinstance(status, dict) and status.get("key") == paths.key else None


def request_stop(paths: Paths) -> bool:
    """Ask the server at `paths` to shut down cleanly (in-flight answers finish first)."""
    import httpx

    with socket_client(paths.socket, timeout=httpx.Timeout(PROBE_READ_S, connect=PROBE_CONNECT_S)) as client:
        try:
            return client.post("/dsvl/stop").is_success
        except httpx.HTTPError:
            return False


def python_env() -> dict:
    """The environment for a server process: this one, with this dsvl_cli first on the path (the
    server must run the same code as the client that started it, whatever its working folder)."""
    import dsvl_cli

    root = str(Path(dsvl_cli.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- dsvl ps, dsvl stop ------------------------------------------------------------------------------

STOP_WAIT_S = 15.0  # a clean stop lets in-flight answers finish (serve's grace is 10 s)


def running() -> list[dict]:
    """One row per server that wrote a state file: its live status, or its state with status
    "not answering" when it is alive but silent. A dead one's files are removed on the way."""
    rows = []
    for paths, state in all_states():
        status = probe(paths) if state is not None else None
        if status is not None:
            rows.append({**status, "status": "running"})
        elif state is not None and alive(state["pid"]) and is_ours(state["pid"], paths.key):
            rows.append({**state, "status": "not answering", "requests": None, "in_flight": None, "idle_s": None,
                         "keep_alive_s": None, "expires_in_s": None, "rss_bytes": None, "gpu_bytes": None})
        else:
            with file_lock(paths.lock, wait=False) as free:  # not while a client is starting one
                if free:
                    remove_files(paths, state["pid"] if state else None)
    return rows


def matches(row: dict, name: str) -> bool:
    """`name` is the server's model as given, the same model named another way, or its key."""
    wanted = identity(ModelSettings(model=name))["model"] if name else ""
    key = str(row.get("key"))
    return (name == row.get("model") or wanted == (row.get("identity") or {}).get("model")
            or (len(name) >= 4 and key.startswith(name)))


def stop(name: str | None, everything: bool) -> list[dict]:
    """Stop the servers of model (or key) `name`, or all of them; the rows of those stopped.
    With neither, the one running server (UsageError when there are several)."""
    rows = running()
    if name:
        chosen = [row for row in rows if matches(row, name)]
        if not chosen:
            from dsvl_cli.errors import DsvlError

            raise DsvlError(f"no keep-alive server for {name} is running (dsvl ps lists them)")
    elif everything or len(rows) <= 1:
        chosen = rows
    else:
        names = ", ".join(sorted({str(row["model"]) for row in rows}))
        raise UsageError(f"{len(rows)} keep-alive servers are running ({names}): name a model or use --all")
    for row in chosen:
        paths, pid = Paths.for_key(row["key"]), int(row["pid"])
        if row["status"] != "running" or not request_stop(paths) or not wait_gone(pid, STOP_WAIT_S):
            terminate(pid, paths.key)
        remove_files(paths, pid)
    return chosen
