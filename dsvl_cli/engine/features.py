"""The image-feature cache: vision-tower outputs kept by the hash of the preprocessed pixels.

What it is for: the warm engine sees the same picture again and again (a chat re-sends its whole
history every turn, a batch file asks several questions about one photo, clients resend a picture
with each request). Its vision towers (SAM + SigLIP on the hybrid models) are the most expensive part
of a prefill; their output for one picture is (1, num_image_tokens, hidden), a few MB.

The key is a blake2b digest of the image processor's tensors (shape, dtype and bytes), so the same
photo read from another path or URL hits, and two pictures of the same size never collide. The same
digest names the picture in the prefix cache (engine/prefix_cache.py), where the placeholders of every
picture are the same tokens. Bounded in bytes, least recently used first out; `hits` and `misses` are
what /metrics reports.

Not thread-safe: the engine loop's thread owns it.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

DEFAULT_BYTES = 256 * 2**20


@dataclass
class Picture:
    """One picture of a request, preprocessed: its pixel tensors (CPU, batch 1) and their digest."""

    pixels: dict[str, Any]
    digest: str
    prep_s: float


def digest(pixels: dict[str, Any]) -> str:
    """blake2b over every tensor's name, shape, dtype and bytes."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(pixels):
        tensor = pixels[name].detach().contiguous().cpu()
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        h.update(tensor.view(-1).view(dtype=_byte_dtype()).numpy().tobytes())
    return h.hexdigest()


def _byte_dtype():
    import torch

    return torch.uint8


def prepare(engine, image) -> Picture:
    """Preprocess one PIL picture through the engine's one path, and name it by its pixels."""
    started = time.perf_counter()
    pixels = engine.pixels(image, remember=False)
    return Picture(pixels, digest(pixels), time.perf_counter() - started)


class ImageFeatureCache:
    """digest -> vision-tower output (1, tokens, hidden) on the model's device; LRU, bounded in bytes."""

    def __init__(self, max_bytes: int = DEFAULT_BYTES):
        self.max_bytes = max(0, int(max_bytes))
        self._entries: OrderedDict[str, Any] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.encoded = 0  # pictures run through the vision towers

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str):
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: str, features) -> None:
        size = features.numel() * features.element_size()
        if size > self.max_bytes or key in self._entries:
            return
        self._entries[key] = features
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= dropped.numel() * dropped.element_size()

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def features(self, model, pictures: list[Picture]):
        """(n, tokens, hidden) for `pictures` in order: cached ones looked up, the others through the
        vision towers in one pass (each distinct digest once) and kept."""
        import torch

        found: dict[str, Any] = {}
        for picture in pictures:
            cached = self.get(picture.digest)
            if cached is not None:
                found[picture.digest] = cached
        missing = list({p.digest: p for p in pictures if p.digest not in found}.values())
        hits = sum(1 for p in pictures if p.digest in found)
        self.hits, self.misses = self.hits + hits, self.misses + len(pictures) - hits
        if missing:
            pixels = {key: torch.cat([p.pixels[key] for p in missing]).to(model.device, dtype=model.dtype)
                      for key in missing[0].pixels}
            with torch.inference_mode():
                pooled = model.base_model.get_image_features(**pixels, return_dict=True).pooler_output
            for k, picture in enumerate(missing):
                found[picture.digest] = pooled[k:k + 1].clone()
                self.put(picture.digest, found[picture.digest])
            self.encoded += len(missing)
        return torch.cat([found[p.digest] for p in pictures])
