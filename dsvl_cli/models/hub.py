"""The Hugging Face Hub as dsvl meets it: where the cache is, which files a model needs, whether
the Hub answers (in 2 s, not after a client's retries), and the one line that says what to do when
it does not. Imports no huggingface_hub: `dsvl models --help` and the loader's fast path stay light.

The cache folder is computed from the environment each time (huggingface_hub's own constants are
frozen when it is first imported): HF_HUB_CACHE, else HF_HOME/hub, else
$XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dsvl_cli import catalog

# The loader reads safetensors, JSON, the tokenizer and the template; pull fetches only these, so
# it never downloads a pickle (`pytorch_model.bin`) the loader would refuse, or any code.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name, as the Hub accepts them
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]
PROBE_TIMEOUT_S = 2.0
DEEPSEEK_VL_TYPES = {"deepseek_vl": False, "deepseek_vl_hybrid": True}  # model_type -> hybrid
_TRUE = {"1", "on", "yes", "true"}


def cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "huggingface" / "hub"


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def offline(flag: bool = False) -> bool:
    """--offline / DSVL_OFFLINE, or huggingface_hub's own HF_HUB_OFFLINE."""
    return flag or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def probe(url: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when `url` (the Hub) answers an HTTP request within `timeout` seconds, else why not.

    Any HTTP status counts as reachable. The request runs in a daemon thread so that a slow DNS
    lookup (which no socket timeout covers) cannot hold the caller past `timeout` either. Proxies
    come from the environment, as for every other request."""
    import ssl
    import threading
    import urllib.error
    import urllib.request

    url = url or endpoint()
    outcome: list[str | None] = []

    def ask() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLError):  # something answered in TLS; huggingface_hub may
                outcome.append(None)  # trust a CA (REQUESTS_CA_BUNDLE, a proxy's) that urllib does not
            else:
                outcome.append(str(getattr(exc.reason, "strerror", None) or exc.reason))
        except (OSError, ValueError) as exc:  # a timeout while reading, a malformed HF_ENDPOINT
            outcome.append(str(getattr(exc, "strerror", None) or exc))

    worker = threading.Thread(target=ask, name="dsvl-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        return f"no answer within {timeout:g} s"
    return outcome[0]


def first_run_hint(alias: str | None = None) -> str:
    """What to do without the Hub: pull elsewhere, a local folder, or tiny-random."""
    short = {repo: name for name, repo in catalog.HUB_ALIASES.items()}
    pull = f"dsvl pull {short.get(alias, alias)}" if alias else "dsvl pull MODEL"
    return (f"run `{pull}` where the Hub is reachable, use --model PATH for a local model folder, "
            "or --model tiny-random to try dsvl offline (random weights)")


def unreachable(repo_id: str, why: str, alias: str | None = None) -> str:
    return (f"model {repo_id}: not in the Hugging Face cache ({cache_dir()}) and the Hub {endpoint()} "
            f"cannot be reached ({why}); {first_run_hint(alias or repo_id)}")


def offline_message(repo_id: str, alias: str | None = None) -> str:
    return (f"model {repo_id}: not in the Hugging Face cache ({cache_dir()}) and offline mode is on "
            f"(--offline, DSVL_OFFLINE or HF_HUB_OFFLINE); {first_run_hint(alias or repo_id)}")
