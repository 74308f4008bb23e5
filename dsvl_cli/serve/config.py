"""`dsvl serve`'s own settings, checked at start: the API key, the Host allow-list, the media policy.

No fastapi here: the command validates its flags before the server's imports and the model load.

Why the key rules: an empty `DSVL_API_KEY` (set for clients, or a template left blank) used to
switch authentication off without a word; a key with characters outside printable ASCII can never
arrive in an HTTP header intact, so no client could ever match it. Both now stop the server at
start. `--api-key-file` keeps the key out of `ps` and shell history.
"""

from __future__ import annotations

from pathlib import Path

from dsvl_cli.errors import UsageError
from dsvl_cli.images.guard import MediaPolicy, parse_domains

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def check_key(key: str, where: str) -> str:
    """The key without surrounding whitespace; UsageError when empty or not printable ASCII."""
    key = key.strip()
    if not key:
        raise UsageError(f"{where} is empty; give a key, or unset it to run without one")
    if not (key.isascii() and key.isprintable()) or any(ch.isspace() for ch in key):
        raise UsageError(f"{where}: the key must be printable ASCII without spaces "
                         "(HTTP headers carry nothing else, so no client could send it)")
    return key


def api_key(flag: str | None, env: str | None, key_file: Path | None) -> str | None:
    """The key clients must send (None: no key): from --api-key-file, else --api-key, else
    DSVL_API_KEY. `flag`/`env` are None when not given at all; "" when given empty."""
    if key_file is not None:
        if flag is not None:
            raise UsageError("--api-key-file and --api-key: give the key one way")
        try:
            text = key_file.expanduser().read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"--api-key-file {key_file}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--api-key-file {key_file}: cannot read it ({exc})") from None
        lines = text.splitlines()
        return check_key(lines[0] if lines else "", f"--api-key-file {key_file}")
    if flag is not None:
        return check_key(flag, "--api-key")
    if env is not None:
        return check_key(env, "DSVL_API_KEY")
    return None


def is_loopback(host: str) -> bool:
    return host.lower() in LOOPBACK_NAMES or host.startswith("127.")


def allowed_hosts(host: str, extra: str | None) -> frozenset[str] | None:
    """Host names answered: when bound to loopback, the loopback names plus `--allowed-hosts`;
    otherwise any (None) unless `--allowed-hosts` names some."""
    names = frozenset(n.strip().lower().rstrip(".") for n in (extra or "").split(",") if n.strip())
    if "*" in names:
        return None
    if is_loopback(host):
        return LOOPBACK_NAMES | {host.lower()} | names
    return names or None


def media_policy(allow_private: bool, domains: str | None, no_url_images: bool) -> MediaPolicy:
    allowed = parse_domains(domains)
    if allowed is not None and not allowed:
        raise UsageError("--allowed-media-domains is empty; name at least one host (or use --no-url-images)")
    return MediaPolicy(allow_private=allow_private, allowed_domains=allowed, allow_urls=not no_url_images)
