"""The keep-alive server process: `dsvl serve`'s app over one model, on a private unix socket, that
exits after its keep-alive time without requests.

Started only by keepalive/client.py, as `python -m dsvl_cli.keepalive.server --status-fd N SPEC`
(SPEC: the key, the ModelSettings, the caller's working folder, the keep-alive seconds). What it
does, in order:
1. Forks and lets the launched process exit, so the server is nobody's child (never a zombie of a
   long-lived client) and has no controlling terminal (the launcher started a new session).
2. Loads the model in the caller's working folder (a relative `-m ./folder` means what it meant
   there), then leaves for the run folder. A failure is written to the status pipe as
   {"error": {kind, message, exit_code}} so the client reports it as a local load would.
3. Binds a temporary socket (0600, in the 0700 run folder); once uvicorn serves on it, renames it
   to KEY.sock (so a KEY.sock always answers), writes KEY.json, writes {"ready": true} and closes
   the pipe.
4. Serves until idle for the keep-alive time (in-flight answers keep it alive; the clock starts
   when the last one ends), until `POST /dsvl/stop`, SIGTERM/SIGINT, or until its socket file is
   removed or replaced (a client judged it hung). It removes its socket and state file on the way
   out, unless they are no longer its own.

Extra routes, outside the OpenAI API: `GET /dsvl/status` (`?touch=1` counts as activity,
`&keep_alive=SECONDS` sets the idle time: the last client's value wins) and `POST /dsvl/stop`.
Counters are touched by the event loop only; the watchdog thread only reads them.
Limits: the idle check runs every second at most, so it exits up to ~1 s after its time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading
import time
from urllib.parse import parse_qs

from dsvl_cli import __version__
from dsvl_cli.errors import DsvlError, ExitCode
from dsvl_cli.keepalive import registry
from dsvl_cli.userfiles import write_atomic

# The caller loaded its images as a local run does (its caps, its intake shrink, --exact-pixels) and
# sends them losslessly: the server must take them as they are, not apply a public server's caps.
NO_SHRINK = 1 << 30  # no picture is that large: decoded as sent
START_TIMEOUT_S = 120.0  # uvicorn's own start-up, after the model loaded: milliseconds normally
BODY_CAP = 1 << 30  # the client already applied the user's image caps; chat resends every image per turn
log = logging.getLogger("dsvl.serve")


class Activity:
    """Requests in flight, answers served, and when the last request ended."""

    def __init__(self, keep_alive: float):
        self.keep_alive = keep_alive
        self.in_flight = 0
        self.requests = 0
        self.last = time.monotonic()

    def idle_s(self) -> float:
        return 0.0 if self.in_flight else time.monotonic() - self.last

    def expires_in_s(self) -> float:
        return max(0.0, self.keep_alive - self.idle_s())


def private_limits():
    """dsvl serve's per-request caps, opened up: only this user's own calls reach this server."""
    from dsvl_cli.serve.limits import ServeLimits

    return ServeLimits(max_images=1 << 20, max_image_bytes=BODY_CAP, max_image_pixels=1 << 40,
                       max_text_chars=1 << 30, body_timeout_s=600.0)


class PrivateApp:
    """ASGI wrapper: the /dsvl routes, and activity around every other request."""

    def __init__(self, app, activity: Activity, info: dict):
        self.app, self.activity, self.info = app, activity, info
        self.state = app.state  # what make_server reads from the app it serves (its drain)
        self.server = None  # the uvicorn Server, once made: /dsvl/stop asks it to exit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path == "/dsvl/status":
            return await self._status(scope, send)
        if path == "/dsvl/stop" and scope["method"] == "POST":
            log.info("stop requested: exiting")
            self.server.should_exit = True
            return await _json(send, 200, {"stopping": True, "pid": os.getpid()})
        activity = self.activity
        activity.in_flight += 1
        if path == "/v1/chat/completions":
            activity.requests += 1
        try:
            await self.app(scope, receive, send)
        finally:
            activity.in_flight -= 1
            activity.last = time.monotonic()

    async def _status(self, scope, send):
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        activity = self.activity
        if query.get("keep_alive"):
            try:
                activity.keep_alive = max(0.0, float(query["keep_alive"][0]))
            except ValueError:
                return await _json(send, 400, {"error": {"message": "keep_alive: not a number"}})
        if query.get("touch") == ["1"]:
            activity.last = time.monotonic()
        return await _json(send, 200, {**self.info, "requests": activity.requests, "in_flight": activity.in_flight,
                                       "idle_s": activity.idle_s(), "keep_alive_s": activity.keep_alive,
                                       "expires_in_s": activity.expires_in_s(), **memory(self.info["device"])})


async def _json(send, status: int, obj: dict) -> None:
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def memory(device: str) -> dict:
    """Resident memory of this process (and the GPU memory torch holds, on CUDA)."""
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # peak, not current, where there is no /proc
        rss = peak if sys.platform == "darwin" else peak * 1024
    out = {"rss_bytes": rss, "gpu_bytes": None}
    if device.startswith("cuda"):
        import torch

        out["gpu_bytes"] = int(torch.cuda.memory_reserved(device))
    return out


# -- the process ---------------------------------------------------------------------------------

class StatusPipe:
    """The one JSON line for the client that started us: ready, or the error that stopped us."""

    def __init__(self, fd: int):
        self.fd = fd

    def report(self, message: dict) -> None:
        if self.fd < 0:  # already said (the number may belong to another file by now)
            return
        fd, self.fd = self.fd, -1
        try:
            os.write(fd, (json.dumps(message) + "\n").encode())
        except OSError:  # the client is gone (Ctrl-C while we loaded): we serve the next one
            pass
        finally:
            os.close(fd)

    def error(self, kind: str, message: str, exit_code: int = int(ExitCode.FAILURE)) -> None:
        self.report({"error": {"kind": kind, "message": message, "exit_code": exit_code}})


def load(spec: dict):
    """The engine, loaded in the caller's working folder."""
    from dsvl_cli.engine import open_backend
    from dsvl_cli.settings import ModelSettings

    settings = ModelSettings(**spec["settings"])
    here = os.getcwd()
    try:
        os.chdir(spec.get("cwd") or here)
    except OSError:
        pass
    try:
        return settings, open_backend(settings)
    finally:
        os.chdir(here)


def bind(path) -> tuple[socket.socket, int]:
    """A listening unix socket at `path`, mode 0600 from birth; (socket, its inode)."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(256)
    return sock, os.stat(path).st_ino


def publish(server, paths: registry.Paths, tmp, info: dict, status: StatusPipe, done: threading.Event) -> bool:
    """Once uvicorn serves: move the socket to its public name, write the state, tell the client.

    Why a temporary name first: a client that finds KEY.sock must find a server that answers; one
    still starting could otherwise be taken for a hung one and be replaced."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if done.is_set() or server.should_exit or time.monotonic() > deadline:
            return False
        done.wait(0.01)
    write_atomic(paths.state, json.dumps(info), private=True)  # first: a published socket always has its state
    os.replace(tmp, paths.socket)
    log.info(f"{info['model']} on {paths.socket} (pid {os.getpid()})")
    status.report({"ready": True, "pid": os.getpid()})
    return True


def watch(server, activity: Activity, paths: registry.Paths, inode: int, done: threading.Event) -> None:
    """Ask uvicorn to exit once idle past the keep-alive time, or once our socket is gone."""
    while not done.is_set() and not server.should_exit:
        try:
            replaced = os.stat(paths.socket).st_ino != inode
        except OSError:
            replaced = True
        if replaced:
            log.info("socket removed or replaced: exiting")
            server.should_exit = True
            return
        if activity.in_flight == 0 and activity.expires_in_s() <= 0:
            log.info(f"idle for {activity.keep_alive:g} s: exiting")
            server.should_exit = True
            return
        done.wait(min(max(activity.expires_in_s(), 0.05), 1.0))


def _publish_then_watch(server, activity, paths, tmp, inode, info, status, done) -> None:
    if publish(server, paths, tmp, info, status, done):
        watch(server, activity, paths, inode, done)
    else:
        server.should_exit = True


def serve(spec: dict, status: StatusPipe) -> int:
    """Load, listen, report ready, serve until idle; the exit code."""
    try:
        from dsvl_cli.serve import app as server_app
    except ImportError as exc:
        status.error("error", f"--keep-alive needs {exc.name or 'fastapi and uvicorn'}: pip install 'dsvl-cli[serve]'")
        return 1
    server_app.configure_logging()
    try:
        settings, engine = load(spec)
    except DsvlError as err:
        status.error(err.kind, err.message, int(err.exit_code))
        return int(err.exit_code)
    paths = registry.Paths.for_key(spec["key"])
    dtype = str(getattr(getattr(engine, "model", None), "dtype", "")).replace("torch.", "")
    info = {"key": paths.key, "pid": os.getpid(), "model": settings.model, "device": str(getattr(engine, "device", "")),
            "dtype": dtype, "settings": registry.settings_dict(settings), "identity": spec.get("identity"),
            "version": __version__,
            "started": time.time(), "socket": str(paths.socket), "log": str(paths.log)}
    activity = Activity(float(spec["keep_alive"]))
    app = PrivateApp(server_app.create_app(engine, max_body_bytes=BODY_CAP, limits=private_limits(),
                                           allowed_hosts=frozenset({"localhost"}), image_max_side=NO_SHRINK),
                     activity, info)
    server = app.server = server_app.make_server(app)
    tmp = paths.socket.with_name(f".{os.getpid()}.sock")  # shorter than KEY.sock: its length was checked
    sock, inode = bind(tmp)
    done = threading.Event()
    threading.Thread(target=_publish_then_watch, args=(server, activity, paths, tmp, inode, info, status, done),
                     daemon=True, name="dsvl-keepalive-watch").start()
    try:
        server.run(sockets=[sock])
    finally:
        done.set()
        tmp.unlink(missing_ok=True)
        _cleanup(paths, inode)
    # A no-op once "ready" was said; otherwise uvicorn could not start and the client hears why.
    status.error("error", f"the keep-alive server stopped before it was ready (log: {paths.log})")
    return 0


def _cleanup(paths: registry.Paths, inode: int) -> None:
    """Remove our socket and state file, unless a newer server of the same key owns them now."""
    try:
        if os.stat(paths.socket).st_ino == inode:
            paths.socket.unlink()
    except OSError:
        pass
    state = registry.read_state(paths.state)
    if state is not None and state["pid"] == os.getpid():
        paths.state.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsvl_cli.keepalive.server", description=__doc__.splitlines()[0])
    parser.add_argument(registry.MARK, action="store_true", help="names this process as a keep-alive server")
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("spec")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec)
    os.set_inheritable(args.status_fd, False)  # nothing the server starts may hold the client's pipe open
    if os.fork():
        os._exit(0)  # the launcher: its parent reaps it at once; the server is reparented to init
    status = StatusPipe(args.status_fd)
    try:
        code = serve(spec, status)
    except BaseException as exc:  # not a DsvlError: say so to the client, keep the traceback in the log
        log.exception("keep-alive server failed")
        status.error("error", f"the keep-alive server failed: {type(exc).__name__}: {exc} "
                              f"(log: {registry.Paths.for_key(spec['key']).log})")
        code = int(ExitCode.FAILURE)
    # Tearing down torch and transformers' modules takes seconds and saves nothing: our files are
    # gone, the log is flushed, and `dsvl stop` waits for this pid.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
