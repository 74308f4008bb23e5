"""Shell completion of model names and image paths (typer's bash/zsh/fish completion calls these).

Runs on every Tab press, so it stays cheap: the aliases, then the repositories in the Hugging Face
cache read as folder names (`models--org--name`), without huggingface_hub's full scan or torch.
Image paths: folders and image files under the typed prefix (`~` expanded), as the shell would.
"""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".avif"}


def model_names() -> list[tuple[str, str]]:
    """(name, help) for every alias, then every model repository in the cache."""
    from dsvl_cli import catalog
    from dsvl_cli.models import hub

    names = [(alias, repo) for alias, repo in catalog.HUB_ALIASES.items()]
    names += [(alias, "random weights, built offline") for alias in catalog.RANDOM_MODELS]
    try:
        entries = sorted(os.listdir(hub.cache_dir()))
    except OSError:
        entries = []
    for entry in entries:
        if entry.startswith("models--") and entry.count("--") >= 2:
            names.append(("/".join(entry.split("--")[1:3]), "in the Hugging Face cache"))
    return names


def complete_model(incomplete: str) -> list[tuple[str, str]]:
    return [(name, help) for name, help in model_names() if name.startswith(incomplete)]


def complete_image(incomplete: str) -> list[str]:
    """Folders (with a trailing /) and image files that start with `incomplete`."""
    if incomplete.startswith(("http://", "https://", "data:")):
        return []
    head, slash, prefix = incomplete.rpartition("/")
    folder = Path(os.path.expanduser(head)) if head else Path("/" if slash else ".")
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    shown = f"{head}/" if slash else ""
    out = []
    for entry in entries:
        if not entry.name.startswith(prefix) or (entry.name.startswith(".") and not prefix.startswith(".")):
            continue
        try:
            if entry.is_dir():
                out.append(f"{shown}{entry.name}/")
            elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                out.append(f"{shown}{entry.name}")
        except OSError:
            continue
    return out
