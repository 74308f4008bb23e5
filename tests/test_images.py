"""Tests for dsvl_cli.images: every source kind, every colour mode, every bad input. Offline."""

from __future__ import annotations

import base64
import io
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from dsvl_cli import __version__, images
from dsvl_cli.images import decode, fetch, limits
from dsvl_cli.errors import ExitCode, ImageLoadError, UsageError
from dsvl_cli.images import LoadedImage, load_image, load_images

RED = (255, 0, 0)
WHITE = (255, 255, 255)


def png_bytes(size=(8, 6), color=RED, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def save(path: Path, image: Image.Image, fmt: str | None = None, **kw) -> str:
    image.save(path, fmt, **kw)
    return str(path)


def assert_error(excinfo, source: str, *fragments: str) -> None:
    err = excinfo.value
    assert isinstance(err, ImageLoadError)
    assert err.source == source
    assert err.exit_code == ExitCode.USAGE
    assert "\n" not in err.reason and "Traceback" not in err.reason
    for fragment in fragments:
        assert fragment in err.reason, err.reason
    assert str(err) == f"image {source}: {err.reason}"


def px(loaded: LoadedImage, xy=(0, 0)):
    return loaded.image.getpixel(xy)


def close_to(a, b, tol=3) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


# --- paths -------------------------------------------------------------------------------------


def test_plain_png_path_gives_rgb_loaded_image(tmp_path):
    path = save(tmp_path / "red.png", Image.new("RGB", (8, 6), RED))
    loaded = load_image(path)
    assert loaded.source == path
    assert loaded.image.mode == "RGB" and loaded.image.size == (8, 6)
    assert px(loaded) == RED
    assert loaded.load_s >= 0


def test_path_with_spaces_and_unicode(tmp_path):
    path = save(tmp_path / "my фото 猫 picture.png", Image.new("RGB", (5, 5), RED))
    assert px(load_image(path)) == RED


def test_tilde_expands_to_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    save(tmp_path / "pic.png", Image.new("RGB", (3, 3), RED))
    loaded = load_image("~/pic.png")
    assert loaded.source == "~/pic.png"
    assert px(loaded) == RED


@pytest.mark.parametrize("name", ["a:b.png", "foo:bar.png", "C:photo.png"])
def test_names_with_colon_that_exist_are_paths(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    save(tmp_path / name, Image.new("RGB", (3, 3), RED), "PNG")
    assert px(load_image(name)) == RED


def test_colon_name_that_does_not_exist_is_no_such_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImageLoadError) as e:
        load_image("foo:bar.png")
    assert_error(e, "foo:bar.png", "no such file")


def test_missing_file(tmp_path):
    source = str(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError) as e:
        load_image(source)
    assert_error(e, source, "no such file")


def test_directory(tmp_path):
    with pytest.raises(ImageLoadError) as e:
        load_image(str(tmp_path))
    assert_error(e, str(tmp_path), "is a directory")


def test_empty_source_string():
    with pytest.raises(ImageLoadError) as e:
        load_image("")
    assert_error(e, "", "empty")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read anything")
def test_permission_denied_real(tmp_path):
    path = save(tmp_path / "secret.png", Image.new("RGB", (3, 3), RED))
    os.chmod(path, 0)
    try:
        with pytest.raises(ImageLoadError) as e:
            load_image(path)
        assert_error(e, path, "permission denied")
    finally:
        os.chmod(path, 0o644)


def test_permission_denied_on_open(tmp_path, monkeypatch):
    path = save(tmp_path / "secret.png", Image.new("RGB", (3, 3), RED))

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images, "open", deny, raising=False)
    with pytest.raises(ImageLoadError) as e:
        load_image(path)
    assert_error(e, path, "permission denied")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError) as e:
        load_image(str(path))
    assert_error(e, str(path), "empty file")


@pytest.mark.parametrize(
    "content", [b"hello, I am just text\n", os.urandom(2048), b"\x00" * 100, b"GIF89a"]
)
def test_not_an_image(tmp_path, content):
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError) as e:
        load_image(str(path))
    assert_error(e, str(path))
    assert e.value.reason in ("not a recognised image format", "truncated or corrupt image data")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("shopping list: eggs, milk\n")
    with pytest.raises(ImageLoadError) as e:
        load_image(str(path))
    assert_error(e, str(path), "not a recognised image format")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(tmp_path, fmt):
    noise = Image.frombytes("RGB", (200, 200), os.urandom(200 * 200 * 3))
    buf = io.BytesIO()
    noise.save(buf, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageLoadError) as e:
        load_image(str(path))
    assert_error(e, str(path), "truncated or corrupt image data")


@pytest.mark.parametrize(
    "content",
    [
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>',
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>',
        b"\xef\xbb\xbf  <svg></svg>",
    ],
)
def test_svg_refused(tmp_path, content):
    path = tmp_path / "logo.svg"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError) as e:
        load_image(str(path))
    assert_error(e, str(path), "SVG is not supported; convert it to PNG first")


def test_html_file_refused(tmp_path):
    path = tmp_path / "saved.png"
    path.write_bytes(b"<!DOCTYPE html><html><body>hi</body></html>")
    with pytest.raises(ImageLoadError) as e:
        load_image(str(path))
    assert_error(e, str(path), "HTML", "not an image")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_non_seekable_file_such_as_a_pipe(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    data = png_bytes()
    writer = threading.Thread(target=lambda: fifo.write_bytes(data), daemon=True)
    writer.start()
    assert px(load_image(str(fifo))) == RED
    writer.join(5)


@pytest.mark.parametrize("name", ["shapes.png", "sunset.jpg", "chart.png"])
def test_bundled_examples_load(name):
    path = Path(__file__).resolve().parent.parent / "examples" / name
    loaded = load_image(str(path))
    assert loaded.image.mode == "RGB" and min(loaded.image.size) >= 200


def test_bundled_jobs_file_names_existing_images():
    import json

    root = Path(__file__).resolve().parent.parent
    lines = (root / "examples" / "jobs.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len({r["id"] for r in records}) == len(records) >= 4
    for record in records:
        for image in record.get("images", [record["image"]] if "image" in record else []):
            assert (root / image).is_file()


# --- decoding: orientation, transparency, modes, animation, bombs --------------------------------


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), RED)
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(tmp_path / "phone.jpg", image, "JPEG", exif=exif.tobytes(), quality=95)
    loaded = load_image(path)
    assert loaded.image.size == (20, 40)
    assert close_to(px(loaded, (10, 2)), (0, 0, 255), tol=40)  # the stripe is now on top
    assert close_to(px(loaded, (10, 37)), RED, tol=40)


def test_rgba_transparent_pixel_becomes_white(tmp_path):
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    image.putpixel((0, 0), (0, 0, 0, 0))
    image.putpixel((1, 0), (0, 0, 0, 128))
    loaded = load_image(save(tmp_path / "alpha.png", image))
    assert loaded.image.mode == "RGB"
    assert px(loaded, (0, 0)) == WHITE
    assert close_to(px(loaded, (1, 0)), (127, 127, 127), tol=2)
    assert px(loaded, (2, 2)) == RED


def test_la_transparent_becomes_white(tmp_path):
    image = Image.new("LA", (4, 4), (0, 255))
    image.putpixel((0, 0), (0, 0))
    loaded = load_image(save(tmp_path / "la.png", image))
    assert px(loaded, (0, 0)) == WHITE
    assert px(loaded, (1, 1)) == (0, 0, 0)


def test_palette_with_transparency_becomes_white(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((0, 0), 0)
    loaded = load_image(save(tmp_path / "p.gif", image, "GIF", transparency=0))
    assert px(loaded, (0, 0)) == WHITE
    assert px(loaded, (2, 2)) == RED


def test_palette_without_transparency(tmp_path):
    image = Image.new("RGB", (4, 4), RED).quantize(colors=4)
    assert image.mode == "P"
    assert px(load_image(save(tmp_path / "p.png", image))) == RED


@pytest.mark.parametrize(
    ("mode", "value", "fmt", "expected"),
    [
        ("L", 100, "PNG", (100, 100, 100)),
        ("1", 1, "PNG", WHITE),
        ("I;16", 65535, "PNG", WHITE),
        ("I;16", 32896, "PNG", (128, 128, 128)),
        ("I", 200, "TIFF", (200, 200, 200)),
        ("I", 65535, "TIFF", WHITE),
        ("F", 1.0, "TIFF", WHITE),
        ("CMYK", (0, 0, 0, 0), "JPEG", WHITE),
        ("CMYK", (0, 255, 255, 0), "TIFF", RED),
        ("YCbCr", (76, 85, 255), "JPEG", RED),
    ],
)
def test_modes_convert_to_rgb(tmp_path, mode, value, fmt, expected):
    path = save(tmp_path / f"img.{fmt.lower()}", Image.new(mode, (6, 6), value), fmt)
    loaded = load_image(path)
    assert loaded.image.mode == "RGB"
    assert close_to(px(loaded, (3, 3)), expected, tol=6), px(loaded, (3, 3))


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    """A mid-grey 16-bit image must not come out white (Pillow's plain convert clips)."""
    path = save(tmp_path / "deep.png", Image.new("I;16", (4, 4), 20000))
    value = px(load_image(path))[0]
    assert 70 <= value <= 85


def test_unconvertible_mode_is_a_clear_error():
    with pytest.raises(ImageLoadError) as e:
        decode._to_rgb("odd.tif", Image.new("La", (2, 2)))
    assert_error(e, "odd.tif", "unsupported image mode 'La'")


def _frames(colors):
    return [Image.new("RGB", (10, 10), c) for c in colors]


@pytest.mark.parametrize(("fmt", "ext"), [("GIF", "gif"), ("PNG", "png"), ("WEBP", "webp")])
def test_animated_image_uses_first_frame(tmp_path, fmt, ext):
    from PIL import features

    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    first, *rest = _frames([RED, (0, 255, 0), (0, 0, 255)])
    path = tmp_path / f"anim.{ext}"
    first.save(path, fmt, save_all=True, append_images=rest, duration=100, loop=0, lossless=True)
    with Image.open(path) as check:
        assert getattr(check, "n_frames", 1) == 3
    loaded = load_image(str(path))
    assert close_to(px(loaded, (5, 5)), RED, tol=8)


def test_decompression_bomb_warning_is_refused(tmp_path, monkeypatch):
    path = save(tmp_path / "big.png", Image.new("RGB", (40, 40), RED))  # 1600 px: warn zone
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError) as e:
        load_image(path)
    assert_error(e, path, "image too large", "decompression bomb", "1600 pixels")


def test_decompression_bomb_error_is_refused(tmp_path, monkeypatch):
    path = save(tmp_path / "huge.png", Image.new("RGB", (100, 100), RED))  # > 2x the limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError) as e:
        load_image(path)
    assert_error(e, path, "image too large", "10000 pixels")


def test_bomb_guard_does_not_leak_warning_filter(tmp_path, monkeypatch):
    path = save(tmp_path / "ok.png", Image.new("RGB", (40, 40), RED))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError):
        load_image(path)
    with pytest.warns(Image.DecompressionBombWarning):
        Image.open(path).close()


# --- stdin -------------------------------------------------------------------------------------


def test_stdin_bytes():
    loaded = load_image("-", stdin=io.BytesIO(png_bytes()))
    assert loaded.source == "-" and px(loaded) == RED


def test_stdin_defaults_to_sys_stdin_buffer(monkeypatch):
    fake = io.TextIOWrapper(io.BytesIO(png_bytes()))
    monkeypatch.setattr(sys, "stdin", fake)
    assert px(load_image("-")) == RED


def test_empty_stdin():
    with pytest.raises(ImageLoadError) as e:
        load_image("-", stdin=io.BytesIO(b""))
    assert_error(e, "-", "no bytes on stdin")


def test_stdin_garbage():
    with pytest.raises(ImageLoadError) as e:
        load_image("-", stdin=io.BytesIO(b"definitely not an image"))
    assert_error(e, "-", "not a recognised image format")


def test_stdin_terminal_refused():
    class Tty(io.BytesIO):
        def isatty(self):
            return True

    with pytest.raises(ImageLoadError) as e:
        load_image("-", stdin=Tty(png_bytes()))
    assert_error(e, "-", "terminal")


def test_stdin_over_cap(monkeypatch):
    monkeypatch.setattr(limits, "MAX_IMAGE_BYTES", 100)
    with pytest.raises(ImageLoadError) as e:
        load_image("-", stdin=io.BytesIO(b"\x89PNG" + b"\0" * 500))
    assert_error(e, "-", "larger than the 100 B limit")


def test_cap_from_env(monkeypatch):
    monkeypatch.setenv("DSVL_MAX_IMAGE_BYTES", "2048")
    with pytest.raises(ImageLoadError) as e:
        load_image("-", stdin=io.BytesIO(b"x" * 5000))
    assert_error(e, "-", "larger than the 2 KiB limit")
    assert images.max_image_bytes() == 2048


def test_default_cap_is_50_mib(monkeypatch):
    monkeypatch.delenv("DSVL_MAX_IMAGE_BYTES", raising=False)
    assert limits.MAX_IMAGE_BYTES == 50 * 1024 * 1024
    assert limits.too_big() == "larger than the 50 MiB limit"


@pytest.mark.parametrize("value", ["abc", "0", "-5"])
def test_bad_cap_env_is_usage_error(monkeypatch, value):
    monkeypatch.setenv("DSVL_MAX_IMAGE_BYTES", value)
    with pytest.raises(UsageError, match="DSVL_MAX_IMAGE_BYTES"):
        load_image("-", stdin=io.BytesIO(png_bytes()))


def test_load_images_order_and_single_stdin(tmp_path):
    path = save(tmp_path / "a.png", Image.new("RGB", (3, 3), (0, 0, 255)))
    loaded = load_images([path, "-"], stdin=io.BytesIO(png_bytes()))
    assert [item.source for item in loaded] == [path, "-"]
    assert px(loaded[0]) == (0, 0, 255) and px(loaded[1]) == RED
    assert load_images([]) == []


def test_stdin_twice_refused():
    with pytest.raises(ImageLoadError) as e:
        load_images(["-", "-"], stdin=io.BytesIO(png_bytes()))
    assert_error(e, "-", "stdin can only be read once")


def test_load_images_raises_on_first_bad(tmp_path):
    good = save(tmp_path / "good.png", Image.new("RGB", (3, 3), RED))
    missing1, missing2 = str(tmp_path / "x.png"), str(tmp_path / "y.png")
    with pytest.raises(ImageLoadError) as e:
        load_images([good, missing1, missing2])
    assert e.value.source == missing1


# --- data: URIs --------------------------------------------------------------------------------


def data_uri(data: bytes, media="image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


def test_data_uri_good():
    uri = data_uri(png_bytes())
    loaded = load_image(uri)
    assert loaded.source == uri and px(loaded) == RED


def test_data_uri_tolerates_whitespace_missing_padding_and_urlsafe():
    encoded = base64.urlsafe_b64encode(png_bytes()).decode().rstrip("=")
    uri = "data:image/png;base64," + encoded[:20] + "\n  " + encoded[20:]
    assert px(load_image(uri)) == RED


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("data:image/png;base64,!!!not*base64!!!", "invalid base64"),
        ("data:text/plain;base64,aGVsbG8=", "not image/*"),
        ("data:,hello", "not image/*"),
        ("data:image/png,rawbytes", "not base64-encoded"),
        ("data:image/png;base64", "malformed data: URI"),
        ("data:image/png;base64,", "no image data"),
        ("data:image/png;base64,aGVsbG8gd29ybGQ=", "not a recognised image format"),
        ("data:image/svg+xml;base64," + base64.b64encode(b"<svg></svg>").decode(), "SVG"),
    ],
)
def test_data_uri_bad(uri, fragment):
    with pytest.raises(ImageLoadError) as e:
        load_image(uri)
    assert_error(e, uri, fragment)


def test_data_uri_over_cap(monkeypatch):
    monkeypatch.setattr(limits, "MAX_IMAGE_BYTES", 50)
    uri = "data:image/png;base64," + base64.b64encode(b"\x89PNG" * 20).decode()
    with pytest.raises(ImageLoadError) as e:
        load_image(uri)
    assert "larger than the 50 B limit" in e.value.reason


def test_long_data_uri_is_shortened_in_errors_only():
    good = data_uri(png_bytes(size=(64, 64)))
    assert load_image(good).source == good  # a loaded image keeps the full source
    bad = "data:image/png;base64," + base64.b64encode(os.urandom(3000)).decode()
    with pytest.raises(ImageLoadError) as e:
        load_image(bad)
    assert e.value.source.startswith(bad[:60]) and e.value.source.endswith(f"({len(bad)} chars)")
    assert len(str(e.value)) < 150
    assert "not a recognised image format" in e.value.reason


# --- schemes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "scheme"),
    [
        ("ftp://example.com/a.png", "ftp"),
        ("file:///etc/passwd", "file"),
        ("FILE:///tmp/x.png", "file"),
        ("javascript:alert(1)", "javascript"),
        ("s3://bucket/key.png", "s3"),
        ("gopher://old.example/x", "gopher"),
    ],
)
def test_unsupported_schemes(source, scheme):
    with pytest.raises(ImageLoadError) as e:
        load_image(source)
    assert_error(e, source, f"unsupported URL scheme '{scheme}'", "http(s) URL, data: URI or -")


def test_http_without_slashes_is_malformed_url():
    with pytest.raises(ImageLoadError) as e:
        load_image("https:/example.com/a.png")
    assert_error(e, "https:/example.com/a.png", "malformed URL")


# --- URLs against a local server ---------------------------------------------------------------

PNG = png_bytes(size=(12, 9))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # close-delimited bodies allow responses with no Content-Length
    user_agents: list[str] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def send(self, status, body=b"", ctype="image/png", length=True, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        Handler.user_agents.append(self.headers.get("User-Agent", ""))
        path = self.path
        if path == "/img.png":
            self.send(200, PNG)
        elif path == "/hop":
            self.send(302, headers=[("Location", "/img.png")])
        elif path == "/missing":
            self.send(404, b"nothing here", "text/plain")
        elif path == "/boom":
            self.send(500, b"oops", "text/plain")
        elif path == "/page":
            self.send(200, b"<html><body>Login</body></html>", "text/html; charset=utf-8")
        elif path == "/page-octet":
            self.send(200, b"<!DOCTYPE html><html></html>", "application/octet-stream")
        elif path == "/loop":
            self.send(302, headers=[("Location", "/loop")])
        elif path == "/big":
            self.send(200, PNG + b"\0" * 5000)
        elif path == "/big-stream":
            self.send(200, PNG + b"\0" * 5000, length=False)
        elif path == "/garbage":
            self.send(200, os.urandom(3000), "image/jpeg")
        elif path == "/empty":
            self.send(200, b"")
        elif path == "/svg":
            self.send(200, b"<svg></svg>", "image/svg+xml")
        elif path == "/slow":
            time.sleep(1.0)
            self.send(200, PNG)
        elif path == "/slow-body":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG[:10])
            self.wfile.flush()
            time.sleep(1.0)
            self.wfile.write(PNG[10:])
        else:
            self.send(404, b"", "text/plain")


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that hung up early is fine
        pass


@pytest.fixture(scope="module")
def server():
    httpd = QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_url_png(server):
    Handler.user_agents.clear()
    loaded = load_image(server + "/img.png")
    assert loaded.source == server + "/img.png"
    assert loaded.image.size == (12, 9) and px(loaded) == RED
    assert Handler.user_agents == [f"dsvl/{__version__}"]


def test_url_single_redirect_is_followed(server):
    assert px(load_image(server + "/hop")) == RED


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/missing", "HTTP 404 Not Found"),
        ("/boom", "HTTP 500 Internal Server Error"),
        ("/page", "URL returned an HTML page, not an image"),
        ("/page-octet", "URL returned an HTML page, not an image"),
        ("/loop", "too many redirects"),
        ("/garbage", "not a recognised image format"),
        ("/empty", "empty body"),
        ("/svg", "SVG is not supported"),
    ],
)
def test_url_bad(server, path, fragment):
    with pytest.raises(ImageLoadError) as e:
        load_image(server + path)
    assert_error(e, server + path, fragment)


def test_redirect_loop_stops_after_five(server):
    Handler.user_agents.clear()
    with pytest.raises(ImageLoadError):
        load_image(server + "/loop")
    assert len(Handler.user_agents) == fetch.MAX_REDIRECTS + 1


@pytest.mark.parametrize("path", ["/big", "/big-stream"])
def test_url_over_cap(server, monkeypatch, path):
    monkeypatch.setattr(limits, "MAX_IMAGE_BYTES", 1024)
    with pytest.raises(ImageLoadError) as e:
        load_image(server + path)
    assert_error(e, server + path, "larger than the 1 KiB limit")


def test_url_under_cap_is_fine(server, monkeypatch):
    monkeypatch.setattr(limits, "MAX_IMAGE_BYTES", len(PNG))
    assert px(load_image(server + "/img.png")) == RED


def test_url_read_timeout(server, monkeypatch):
    monkeypatch.setattr(fetch, "READ_TIMEOUT_S", 0.2)
    with pytest.raises(ImageLoadError) as e:
        load_image(server + "/slow")
    assert_error(e, server + "/slow", "timed out after 0.2 s")


def test_url_read_timeout_while_streaming_body(server, monkeypatch):
    monkeypatch.setattr(fetch, "READ_TIMEOUT_S", 0.2)
    with pytest.raises(ImageLoadError) as e:
        load_image(server + "/slow-body")
    assert_error(e, server + "/slow-body", "timed out after 0.2 s")


def test_dns_failure_reason_is_short():
    import requests

    try:
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except socket.gaierror as inner:
            raise requests.ConnectionError("HTTPSConnectionPool(host='nope.invalid')...") from inner
    except requests.ConnectionError as outer:
        reason = fetch.failure_reason(outer)
    assert reason == "could not connect: could not resolve the host name"


def test_url_connection_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.png"
    with pytest.raises(ImageLoadError) as e:
        load_image(url)
    assert_error(e, url, "could not connect", "refused")
    assert len(e.value.reason) < 80


def test_url_without_host():
    with pytest.raises(ImageLoadError) as e:
        load_image("http://")
    assert_error(e, "http://", "invalid URL")


# --- pipes and special files: never hang, never a raw library warning ---------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_without_a_writer_fails_instead_of_hanging(tmp_path, monkeypatch):
    from dsvl_cli.images import pipes

    monkeypatch.setattr(pipes, "PIPE_IDLE_S", 0.3)
    fifo = tmp_path / "nobody-writes.png"
    os.mkfifo(fifo)
    outcome: list = []

    def load():
        try:
            load_image(str(fifo))
        except ImageLoadError as e:
            outcome.append(e)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "load_image blocked on a FIFO nobody writes to"
    (error,) = outcome
    assert error.source == str(fifo) and "named pipe with nothing to read" in error.reason


def test_process_substitution_pipe_still_works():
    """`dsvl ask <(curl -s URL) ...` passes /dev/fd/N, a pipe whose writer is already running."""
    read_end, write_end = os.pipe()
    data = png_bytes()
    writer = threading.Thread(target=lambda: (os.write(write_end, data), os.close(write_end)), daemon=True)
    writer.start()
    try:
        assert px(load_image(f"/dev/fd/{read_end}")) == RED
    finally:
        os.close(read_end)
    writer.join(5)


def test_devices_are_refused():
    with pytest.raises(ImageLoadError) as e:
        load_image("/dev/null")
    assert_error(e, "/dev/null", "not a regular file", "character device")


def test_corrupt_exif_prints_no_warning(tmp_path):
    import warnings

    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(tmp_path / "bad-exif.jpg", Image.new("RGB", (16, 8), RED), "JPEG", exif=exif.tobytes()[:20])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_image(path)
    assert loaded.image.size in ((16, 8), (8, 16))
    assert [str(w.message) for w in caught] == []


def test_display_source_shortens_only_long_data_uris():
    uri = "data:image/png;base64," + "A" * 5000
    shown = images.display_source(uri)
    assert shown.startswith("data:image/png;base64,AAA") and shown.endswith(f"({len(uri)} chars)") and len(shown) < 90
    assert images.display_source("photos/" + "x" * 200 + ".jpg") == "photos/" + "x" * 200 + ".jpg"
    assert images.display_source("data:image/png;base64,AAAA") == "data:image/png;base64,AAAA"


def test_a_callers_opener_is_read_under_the_cap_and_decoded_like_any_source(monkeypatch):
    """images.load_image(..., open_source=): what batch's filesystem URIs (s3://...) go through."""
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(buf, format="PNG")
    data = buf.getvalue()

    loaded = load_image("mem://bucket/red.png", open_source=lambda source: io.BytesIO(data))
    assert loaded.source == "mem://bucket/red.png" and loaded.image.size == (32, 24)

    def refused(source):
        raise OSError("no such bucket\nmore detail")

    with pytest.raises(ImageLoadError, match="cannot read it: no such bucket$"):
        load_image("mem://bucket/gone.png", open_source=refused)
    with pytest.raises(ImageLoadError, match="empty file"):
        load_image("mem://bucket/empty.png", open_source=lambda source: io.BytesIO(b""))
    monkeypatch.setenv("DSVL_MAX_IMAGE_BYTES", "64")
    with pytest.raises(ImageLoadError):
        load_image("mem://bucket/red.png", open_source=lambda source: io.BytesIO(data))
