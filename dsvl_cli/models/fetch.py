"""`dsvl pull` and `dsvl rm`: download a model into the Hugging Face cache, or delete one.

pull uses huggingface_hub's `snapshot_download` with the loader's file filter (hub.HUB_FILES), so
what it fetches is exactly what `dsvl ask` would read: no pickles, no code. A download cut short
resumes where it stopped on the next pull (the library keeps `.incomplete` blobs). Before any
download the Hub gets 2 s to answer, so an offline machine hears so at once. rm deletes through
the cache's own delete strategy (blobs shared with a kept revision stay).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from dsvl_cli import catalog
from dsvl_cli.errors import ModelError, UsageError
from dsvl_cli.models import cache, hub


@dataclass(frozen=True)
class Pulled:
    name: str
    path: Path
    size_bytes: int
    random_weights: bool = False


def repo_of(name: str) -> str:
    """The hub id an alias stands for (or `name`); UsageError when it cannot be one."""
    repo_id = catalog.HUB_ALIASES.get(name, name)
    if not hub.HUB_ID.fullmatch(repo_id):
        raise UsageError(f"model {name}: not a Hub id (owner/name) or alias "
                         f"({', '.join(catalog.alias_names())})")
    return repo_id


def pull(name: str, revision: str | None = None, *, home: Path, offline: bool = False) -> Pulled:
    """Download `name` (an alias or hub id) at `revision`; tiny-random is built in `home` instead."""
    if name in catalog.RANDOM_MODELS:
        if revision:
            raise UsageError(f"--revision {revision}: model {name} is built here, it has no revisions")
        from dsvl_cli.models import tiny_random

        folder = tiny_random.ensure_built(name, home)
        return Pulled(name, folder, cache.folder_bytes(folder), random_weights=True)
    repo_id = repo_of(name)
    if hub.offline(offline):
        cached = _cached(repo_id, revision)
        if cached is not None:
            return Pulled(repo_id, cached, cache.folder_bytes(cached))
        raise ModelError(f"model {repo_id}: cannot download, offline mode is on (--offline, DSVL_OFFLINE or "
                         f"HF_HUB_OFFLINE); {hub.first_run_hint(repo_id)}")
    why = hub.probe()
    if why is not None:
        raise ModelError(f"model {repo_id}: the Hugging Face Hub {hub.endpoint()} cannot be reached ({why}); "
                         f"{hub.first_run_hint(repo_id)}")
    _check_deepseek_vl(repo_id, revision)
    folder = _download(repo_id, revision)
    size = cache.folder_bytes(folder)
    return Pulled(repo_id, folder, size)


def _cached(repo_id: str, revision: str | None) -> Path | None:
    """The complete cached snapshot (offline: nothing to fetch), or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=hub.HUB_FILES,
                                      cache_dir=hub.cache_dir(), local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _check_deepseek_vl(repo_id: str, revision: str | None) -> None:
    """Refuse a model dsvl cannot run before its weights come down (config.json first: a few KB)."""
    from huggingface_hub import hf_hub_download

    config = Path(_calling_hub(repo_id, lambda: hf_hub_download(repo_id, "config.json", revision=revision,
                                                                  cache_dir=hub.cache_dir())))
    try:
        kind = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind not in hub.DEEPSEEK_VL_TYPES:
        raise UsageError(f"model {repo_id}: not a DeepSeek-VL model (config.json model_type {kind!r}); "
                         "dsvl runs deepseek_vl and deepseek_vl_hybrid models only")


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    return Path(_calling_hub(repo_id, lambda: snapshot_download(
        repo_id, revision=revision, allow_patterns=hub.HUB_FILES, cache_dir=hub.cache_dir())))


def _failed(repo_id: str, exc: Exception) -> ModelError:
    reason = str(exc).splitlines()[0] if str(exc) else repr(exc)
    return ModelError(f"model {repo_id}: download failed: {reason}; run `dsvl pull` again to resume")


def _calling_hub(repo_id: str, call):
    """Run a huggingface_hub call; its errors become one line each."""
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        return call()
    except RepositoryNotFoundError:
        raise ModelError(f"model {repo_id}: no such repository on the Hugging Face Hub (or it is private; "
                         "log in with `hf auth login`)") from None
    except RevisionNotFoundError:
        raise ModelError(f"model {repo_id}: no such revision on the Hugging Face Hub") from None
    except LocalEntryNotFoundError as exc:  # a subclass of the next: the connection went, not the file
        raise _failed(repo_id, exc) from None
    except EntryNotFoundError:
        raise ModelError(f"model {repo_id}: has no config.json (not a transformers model)") from None
    except (HfHubHTTPError, OSError) as exc:
        raise _failed(repo_id, exc) from None


@dataclass(frozen=True)
class Removal:
    model: cache.LocalModel
    commits: tuple[str, ...]  # empty for a built model
    freed_bytes: int

    def run(self) -> None:
        if self.model.kind == "built":
            shutil.rmtree(self.model.path)
            return
        from huggingface_hub import scan_cache_dir

        scan_cache_dir(hub.cache_dir()).delete_revisions(*self.commits).execute()


def plan_removal(name: str, revision: str | None, models: list[cache.LocalModel]) -> Removal:
    """What `dsvl rm name [--revision R]` would delete and free; UsageError when nothing matches."""
    model = cache.find(models, name)
    if model is None:
        raise UsageError(f"model {name}: not on this machine (dsvl models lists what is)")
    if model.kind == "built":
        if revision:
            raise UsageError(f"--revision {revision}: model {name} is built here, it has no revisions")
        return Removal(model, (), model.size_bytes)
    revisions = [r for r in model.revisions
                 if revision is None or r["commit"].startswith(revision) or revision in r["refs"]]
    if not revisions:
        raise UsageError(f"model {name}: no cached revision {revision} (cached: "
                         f"{', '.join(r['commit'][:12] for r in model.revisions)})")
    from huggingface_hub import scan_cache_dir

    commits = tuple(r["commit"] for r in revisions)
    freed = scan_cache_dir(hub.cache_dir()).delete_revisions(*commits).expected_freed_size
    return Removal(model, commits, freed)
