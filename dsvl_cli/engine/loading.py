"""Model names: aliases, resolving a name to a local folder, and loading it.

A name is an alias (`7b`, `1.3b`, `tiny-random`, `tiny-random-1.3b`), a local folder, or a Hugging
Face hub id. Hub models are loaded from the local cache, or downloaded (progress on stderr) unless
`--offline`. Loading never runs remote code and reads safetensors only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dsvl_cli import catalog
from dsvl_cli.models import tiny_random
from dsvl_cli.engine.runtime import dsvl_home, pick_device, pick_dtype, quiet_transformers
from dsvl_cli.errors import ModelError, UsageError
from dsvl_cli.models import hub
from dsvl_cli.settings import ModelSettings

HUB_ALIASES = catalog.HUB_ALIASES  # one list for help, README and errors
HUB_FILES = hub.HUB_FILES  # never pickles, never code; `dsvl pull` fetches the same


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the user asked for
    folder: Path
    random_weights: bool  # tiny-random: say so wherever its answers are shown


def resolve(settings: ModelSettings, *, weights: bool = True) -> ResolvedModel:
    """Turn a model name into a local folder, building tiny-random or downloading as needed.

    `weights=False`: a hub model's processor and tokenizer files only (no safetensors): enough for
    `dsvl batch --ray`'s driver, which preprocesses images but never runs the model."""
    name = settings.model
    if name in tiny_random.SPECS:
        try:
            folder = tiny_random.ensure_built(name, dsvl_home())
        except OSError as exc:
            raise ModelError(f"model {name}: cannot build it in {dsvl_home()}: {exc.strerror or exc}") from exc
        return ResolvedModel(name, folder, random_weights=True)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UsageError(f"model {name}: folder has no config.json (not a transformers model folder)")
        return ResolvedModel(name, path, random_weights=False)
    repo_id = HUB_ALIASES.get(name, name)
    if not hub.HUB_ID.fullmatch(repo_id):
        raise UsageError(f"model {name}: no such folder, and not a hub id (owner/name) or alias "
                         f"({', '.join([*HUB_ALIASES, *tiny_random.SPECS])})")
    try:
        return ResolvedModel(name, _snapshot(repo_id, settings, weights, alias=name if repo_id != name else None),
                             random_weights=False)
    except ModelError as err:
        if repo_id != name or name in HUB_ALIASES.values():  # an alias or a known model: never a folder
            raise
        # `checkpoints/final` may be a folder that is not there: say so, then what the Hub said.
        reason = err.message.removeprefix(f"model {repo_id}: ")
        raise ModelError(f"model {name}: no folder {name} here; as a Hub id: {reason}") from None


def _snapshot(repo_id: str, settings: ModelSettings, weights: bool = True, alias: str | None = None) -> Path:
    """The cached snapshot, else a download; without the Hub, one line in seconds (the first run
    of `dsvl ask` with the 7B is where everyone meets this) instead of the client's retries.
    `weights=False`: the processor's files only (batch --ray's driver)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    cache = hub.cache_dir()
    patterns = HUB_FILES if weights else [p for p in HUB_FILES if p != "*.safetensors"]
    try:
        return Path(snapshot_download(repo_id, revision=settings.revision, allow_patterns=patterns,
                                      cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        if hub.offline(settings.offline):
            raise ModelError(hub.offline_message(repo_id, alias)) from None
    why = hub.probe()
    if why is not None:
        raise ModelError(hub.unreachable(repo_id, why, alias))
    try:  # not cached: download, with huggingface_hub's progress bars on stderr
        return Path(snapshot_download(repo_id, revision=settings.revision, allow_patterns=patterns,
                                      cache_dir=cache))
    except RepositoryNotFoundError:
        raise ModelError(f"model {repo_id}: no such repository on the Hugging Face Hub (or it is private)") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise ModelError(hub.unreachable(repo_id, str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                                         alias)) from None


def load(resolved: ResolvedModel, settings: ModelSettings, *, verbose: bool = False):
    """Load (model, processor, device) straight onto the device in the chosen dtype."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    extra = {}
    if settings.quantize:
        from dsvl_cli.engine import quantize

        quantize.check(settings.quantize, device, dtype)
        extra["quantization_config"] = quantize.quantization_config(settings.quantize)
    if not verbose:
        quiet_transformers()
    try:
        processor = AutoProcessor.from_pretrained(resolved.folder, trust_remote_code=False)
        model = AutoModelForImageTextToText.from_pretrained(
            resolved.folder,
            dtype=dtype,
            device_map=device,
            use_safetensors=True,
            trust_remote_code=False,
            **extra,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"model {resolved.name}: cannot load from {resolved.folder}: {exc}".splitlines()[0]) from exc
    except torch.OutOfMemoryError as exc:
        raise ModelError(f"model {resolved.name}: out of memory while loading on {device}; "
                         "try --quantize int4 or a smaller model") from exc
    model.eval()
    return model, processor, device


def load_processor(resolved: ResolvedModel):
    """The model's processor alone (tokenizer + image processor), as `load` makes it: what image
    preprocessing needs on a machine that never runs the model (`dsvl batch --ray`'s Ray tasks)."""
    from transformers import AutoProcessor

    quiet_transformers()
    try:
        return AutoProcessor.from_pretrained(resolved.folder, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"model {resolved.name}: cannot load its processor from {resolved.folder}: "
                         f"{exc}".splitlines()[0]) from exc
