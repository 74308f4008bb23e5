"""The server's per-request caps, checked cheapest first, before any image is fetched or decoded.

Order of checks for one request (each failure is a 400 with a message naming the cap):
1. the body: at most `body_bytes()` (413), JSON only (415), at most `max_json_values()` JSON
   values (counted from the raw bytes: a body of millions of tiny values would cost far more
   memory parsed than its size), parsed off the event loop (a body over 1 MiB waits for one of
   two slots first: see app.Intake);
2. the text: at most `max_text_chars` characters over every message, every role;
3. the images: at most `max_images` distinct sources per request (a source repeated in one
   request is fetched and decoded once);
4. the prompt's token count with each image counted as its image tokens (`PromptCounter`),
   against the model's context length;
5. only then are images fetched (a total deadline each) and decoded, each refused above
   `max_image_pixels`, and shrunk as a local run's intake shrinks it (over ~4 MP: a whole factor
   or a JPEG scale, the last resize the engine's), so --server answers as a local run.

Why these defaults: they bound the memory one request can take (see benchmarks/serve_memory.py
and BENCHMARKS.md: parsing a body costs about twice its size at its peak) while fitting ordinary
use: 8 phone photos per question (48 MiB in all as data: URIs, 10 MiB each), 64,000 characters
of text (several times any context window the models have).
"""

from __future__ import annotations

from dataclasses import dataclass

from dsvl_cli.errors import ContextLengthError, UsageError

MAX_IMAGES = 8
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_BODY_BYTES = 48 * 1024 * 1024  # a whole request, data: URIs included
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_TEXT_CHARS = 64_000
FETCH_TIMEOUT_S = 20.0
BODY_TIMEOUT_S = 60.0  # the whole request body, from the end of its headers
JSON_ROOM = 10_000  # JSON values allowed beyond one per character of text (messages, parts, fields)
MIN_SIDE = 1024  # the model never sees more (the 7B's SAM input); a bigger processor size wins


@dataclass(frozen=True)
class ServeLimits:
    max_images: int = MAX_IMAGES
    max_image_bytes: int = MAX_IMAGE_BYTES
    max_body_bytes: int = MAX_BODY_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_text_chars: int = MAX_TEXT_CHARS
    fetch_timeout_s: float = FETCH_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S

    def __post_init__(self) -> None:
        for name in ("max_images", "max_image_bytes", "max_body_bytes", "max_image_pixels", "max_text_chars"):
            if getattr(self, name) < 0 or (name != "max_images" and getattr(self, name) < 1):
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be positive")
        if not 0 < self.fetch_timeout_s <= 600:
            raise UsageError(f"--fetch-timeout {self.fetch_timeout_s:g}: must be in (0, 600] seconds")

    def body_bytes(self) -> int:
        """The largest body: `max_body_bytes`, or less when the other caps allow less (every image
        as a base64 data: URI, the text with every character JSON-escaped, room for the rest)."""
        images = self.max_images * (self.max_image_bytes * 4 // 3 + 256)
        return min(self.max_body_bytes, images + self.max_text_chars * 6 + 64 * 1024)

    def max_json_values(self) -> int:
        return self.max_text_chars + JSON_ROOM

    def check_json_shape(self, raw: bytes | bytearray) -> None:
        """Refuse, before parsing, a body with more JSON values than a request needs: each value
        but the first follows a comma, and each object or array opens with a brace or bracket
        (base64 data holds neither; text inside strings counts, hence the text cap as room)."""
        values = raw.count(b",") + raw.count(b"{") + raw.count(b"[")
        if values > self.max_json_values():
            raise UsageError(f"the request body has about {values} JSON values; this server accepts at most "
                             f"{self.max_json_values()}")

    def check_text(self, chars: int) -> None:
        if chars > self.max_text_chars:
            raise UsageError(f"the request has {chars} characters of text; this server accepts at most "
                             f"{self.max_text_chars} (--max-text-chars)")

    def check_images(self, count: int) -> None:
        if count > self.max_images:
            raise UsageError(f"the request has {count} different images; this server accepts at most "
                             f"{self.max_images} per request (--max-images)")


def image_side(engine) -> int:
    """The long side images are downscaled to when decoded: what the model's processor uses (the
    backend's `image_side`), at least MIN_SIDE."""
    return max(MIN_SIDE, engine.image_side or 0)


class PromptCounter:
    """Refuses a conversation whose prompt alone fills the context, before any image is loaded
    (images count as their image tokens). Backends that count no tokens (remote, fakes) are not
    checked here; the engine checks itself when it generates."""

    def __init__(self, engine):
        self._engine = engine

    def check(self, conversation) -> None:
        """Raise ContextLengthError when the prompt alone fills the context window."""
        engine = self._engine
        if not engine.counts_tokens or engine.context_length is None:
            return
        tokens = engine.count_tokens(conversation)
        if tokens >= engine.context_length:
            raise ContextLengthError(f"the request is {tokens} tokens, past the model's context length of "
                                     f"{engine.context_length}; shorten the text or send fewer images")
