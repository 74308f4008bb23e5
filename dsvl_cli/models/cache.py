"""What is on this machine: DeepSeek-VL models in the Hugging Face cache (huggingface_hub's own
cache scanner, so sizes count shared blobs once, as `hf cache scan` does) and the tiny-random
builds in DSVL_HOME.

A cached repository is DeepSeek-VL when its newest snapshot's config.json says so (`model_type`
deepseek_vl or deepseek_vl_hybrid); others are listed only when asked (`--all`). Limits: "last
used" is the file system's access time, which `noatime` mounts do not update.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dsvl_cli import catalog
from dsvl_cli.models import hub


@dataclass
class LocalModel:
    name: str  # the hub id, or the tiny-random alias
    kind: str  # "hub" (the Hugging Face cache) or "built" (tiny-random, in DSVL_HOME)
    path: str
    size_bytes: int
    revisions: list[dict] = field(default_factory=list)  # {commit, refs, size_bytes}
    last_used: float | None = None  # POSIX seconds
    hybrid: bool | None = None  # SigLIP + SAM (7B-style); None: not DeepSeek-VL or unknown
    deepseek_vl: bool = True
    aliases: list[str] = field(default_factory=list)
    random_weights: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def aliases_of(repo_id: str) -> list[str]:
    return [alias for alias, repo in catalog.HUB_ALIASES.items() if repo == repo_id]


def short_name(name: str) -> str:
    """`7b` for the 7B's hub id: what a user would type."""
    return next(iter(aliases_of(name)), name)


def model_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def hub_models(include_all: bool = False) -> list[LocalModel]:
    """The model repositories in the Hugging Face cache (DeepSeek-VL only unless `include_all`)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(hub.cache_dir())
    except CacheNotFound:
        return []
    found = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        revisions = sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True)
        kind = model_type(revisions[0].snapshot_path) if revisions else None
        is_dsvl = kind in hub.DEEPSEEK_VL_TYPES
        if not (is_dsvl or include_all):
            continue
        found.append(LocalModel(
            name=repo.repo_id, kind="hub", path=str(repo.repo_path), size_bytes=repo.size_on_disk,
            revisions=[{"commit": r.commit_hash, "refs": sorted(r.refs), "size_bytes": r.size_on_disk}
                       for r in revisions],
            last_used=repo.last_accessed, hybrid=hub.DEEPSEEK_VL_TYPES.get(kind), deepseek_vl=is_dsvl,
            aliases=aliases_of(repo.repo_id)))
    return sorted(found, key=lambda m: m.name.lower())


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder` (a snapshot's links counted at their blobs' size)."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def built_models(home: Path) -> list[LocalModel]:
    """The tiny-random models built in `home` (DSVL_HOME)."""
    from dsvl_cli.models import tiny_random

    found = []
    for name, spec in tiny_random.SPECS.items():
        folder = tiny_random.folder_of(name, home)
        weights = folder / "model.safetensors"
        if not weights.exists():
            continue
        stat = weights.stat()
        found.append(LocalModel(name=name, kind="built", path=str(folder), size_bytes=folder_bytes(folder),
                                last_used=max(stat.st_atime, stat.st_mtime), hybrid=spec.hybrid,
                                aliases=[name], random_weights=True))
    return found


def local_models(home: Path, include_all: bool = False) -> list[LocalModel]:
    return [*hub_models(include_all), *built_models(home)]


def not_local(models: list[LocalModel]) -> list[dict]:
    """The aliases with nothing on this machine yet, and how to get each."""
    have = {alias for m in models for alias in m.aliases}
    rows = [{"name": repo, "aliases": [alias], "how": f"dsvl pull {alias}"}
            for alias, repo in catalog.HUB_ALIASES.items() if alias not in have]
    rows += [{"name": alias, "aliases": [alias], "how": "built on first use (random weights)"}
             for alias in catalog.RANDOM_MODELS if alias not in have]
    return rows


def find(models: list[LocalModel], name: str) -> LocalModel | None:
    """The local model `name` names: a hub id, an alias, or a tiny-random name."""
    target = catalog.HUB_ALIASES.get(name, name)
    for model in models:
        if model.name == target or name in model.aliases:
            return model
    return None
