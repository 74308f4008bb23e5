"""Fetching an image over http(s): timeouts, a redirect limit and a byte cap.

requests is imported only when a URL is fetched. `from_url` is the CLI's fetch: requests follows
redirects and connects as usual. The server's fetch (guarded.py: the media policy on every hop,
connections only to checked addresses) shares what is here: `new_session`, `read_response` (status,
type and the byte cap while streaming) and `failure_reason` (one short line per failure).
"""

from __future__ import annotations

import io
from http import HTTPStatus

from PIL import Image

from dsvl_cli import __version__
from dsvl_cli.errors import ImageLoadError
from dsvl_cli.images.pictures import Want, decode_pictures
from dsvl_cli.images.guard import ImageGuard
from dsvl_cli.images.limits import CHUNK, fmt_bytes, max_image_bytes, one_line, too_big

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
MAX_REDIRECTS = 5


def from_url(source: str, exact: bool, want: Want) -> list[tuple[str, Image.Image]]:
    import requests  # only URL sources pay for importing requests

    cap = max_image_bytes()
    timeout = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
    try:
        with new_session() as session, session.get(source, stream=True, timeout=timeout) as resp:
            body = read_response(source, resp, cap)
    except requests.RequestException as e:
        raise ImageLoadError(source, failure_reason(e)) from None
    return decode_pictures(source, io.BytesIO(body), want, empty_reason="URL returned an empty body", url=True,
                           exact=exact)


def new_session(*, trust_env: bool = True):
    """A requests Session for image fetches: dsvl's User-Agent, at most MAX_REDIRECTS redirects.
    `trust_env=False`: no proxy or .netrc from the environment (the server's guarded fetch)."""
    import requests

    session = requests.Session()
    session.max_redirects = MAX_REDIRECTS
    session.trust_env = trust_env
    session.headers["User-Agent"] = f"dsvl/{__version__}"
    return session


def read_response(source: str, resp, cap: int, guard: ImageGuard | None = None) -> bytes:
    """Check status and headers, then stream the body under the byte cap (and the guard's deadline)."""
    if resp.status_code >= 400:
        try:
            phrase = HTTPStatus(resp.status_code).phrase
        except ValueError:
            phrase = one_line(resp.reason or "")
        raise ImageLoadError(source, f"HTTP {resp.status_code} {phrase}".rstrip())
    ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype in ("text/html", "application/xhtml+xml"):
        raise ImageLoadError(source, "URL returned an HTML page, not an image")
    if ctype == "image/svg+xml":
        raise ImageLoadError(source, "SVG is not supported; convert it to PNG first")
    length = resp.headers.get("Content-Length", "")
    limit = too_big() if guard is None else f"larger than the server's {fmt_bytes(cap)} limit"
    if length.isdigit() and int(length) > cap:
        raise ImageLoadError(source, limit)
    body = bytearray()
    for chunk in resp.iter_content(CHUNK):  # decoded bytes, so a gzip bomb meets the cap too
        body += chunk
        if len(body) > cap:
            raise ImageLoadError(source, limit)
        if guard is not None:
            guard.check(source)
    return bytes(body)


def failure_reason(e: Exception) -> str:
    """One short line for a requests failure; the most specific classes are tested first."""
    from requests import exceptions as rex
    from urllib3.exceptions import ReadTimeoutError

    # A read timeout while streaming the body surfaces as ConnectionError(ReadTimeoutError).
    if isinstance(e, rex.ReadTimeout) or (e.args and isinstance(e.args[0], ReadTimeoutError)):
        return f"timed out after {READ_TIMEOUT_S:g} s"
    if isinstance(e, rex.ConnectTimeout):
        return f"could not connect: timed out after {CONNECT_TIMEOUT_S:g} s"
    if isinstance(e, rex.TooManyRedirects):
        return "too many redirects"
    if isinstance(e, rex.SSLError):
        verify = "CERTIFICATE_VERIFY_FAILED" in str(e)
        return "could not connect: " + ("certificate verify failed" if verify else "SSL error")
    if isinstance(e, rex.ConnectionError):
        return f"could not connect: {connection_text(e)}"
    if isinstance(e, rex.ChunkedEncodingError):
        return "connection broken while downloading"
    if isinstance(e, (rex.InvalidURL, rex.InvalidSchema, rex.MissingSchema)):
        return f"invalid URL ({one_line(str(e))})"
    return f"request failed: {type(e).__name__}"


def connection_text(exc: BaseException) -> str:
    """The root cause under requests' and urllib3's wrappers: DNS failure, refused, reset..."""
    import socket

    todo, seen = [exc], set()
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, socket.gaierror):
            return "could not resolve the host name"
        if isinstance(e, OSError) and e.strerror:
            return one_line(e.strerror)
        links = (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
        todo.extend(x for x in links if isinstance(x, BaseException))
    return "network error"


