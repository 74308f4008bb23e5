"""The fast decode path: a static KV cache and a compiled decode step, inside transformers' `generate`.

Why inside `generate`: greedy tokens stay plain `generate`'s, token for token, and sampling, stop
strings, streaming and Ctrl-C keep working unchanged. What this module adds to a `generate` call:

- a `StaticCache` whose length is rounded up to a power of two (>= 512): the decode step then has
  the same shapes every step and across requests of similar length, so it is compiled once per
  (batch size, bucket) instead of once per request;
- one reusable cache for requests that keep no cache of their own (ask, batch): reset in place,
  not reallocated, so its tensors keep their addresses and CUDA graphs recorded on them replay
  instead of re-recording each request (transformers marks them static, unguarded);
- a `CompileConfig` that transformers applies to the decode step only (prefill stays eager, its
  shapes change with every prompt). On CUDA its mode is "reduce-overhead" (CUDA graphs); on CPU
  plain inductor. Compiled code is kept in `DSVL_HOME/compile-cache` (TORCHINDUCTOR_CACHE_DIR), so
  a later process skips most of the first-call compile (~30 s on 2 CPU cores for tiny-random,
  ~6 s warm).

What is already done elsewhere and NOT repeated here (checked in transformers 5.24):
- last-token-only logits in prefill: `generate` passes `logits_to_keep=1` itself whenever the
  model's forward accepts it (DeepSeek-VL's does), so the prefill never builds an (L, 102400)
  logits matrix;
- SDPA attention: transformers picks it by default for DeepSeek-VL (`config._attn_implementation`);
- the fast (torchvision) image processor: `AutoProcessor` picks it whenever torchvision is
  installed and the PIL one otherwise (`image_processing_auto._resolve_backend`; `use_fast` is
  deprecated in 5.x, `backend=` replaces it);
- weights straight onto the device in the chosen dtype: `models.load` passes `device_map`/`dtype`.

Limits: a static cache cannot grow. A chat turn that would outgrow its cache drops the KV reuse
for that turn (full recompute into a bigger cache); see `FastPath.can_reuse`. Compilation needs a C
compiler on CPU; MPS gets the static cache without compilation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_BUCKET = 512


def bucket(length: int, limit: int) -> int:
    """The static cache length for `length` tokens: the next power of two >= MIN_BUCKET, at most `limit`."""
    size = MIN_BUCKET
    while size < length:
        size *= 2
    return max(length, min(size, limit))


def compile_cache_dir(home: Path) -> Path:
    return home / "compile-cache"


def use_compile_cache(home: Path) -> Path:
    """Point inductor's on-disk caches (FX graphs, AOTAutograd, Triton kernels) at DSVL_HOME.

    An explicit TORCHINDUCTOR_CACHE_DIR from the user wins. Read by inductor at compile time, so
    setting it before the first compiled call is enough.
    """
    folder = compile_cache_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


@dataclass
class FastPath:
    """Static-cache (+ compiled decode) arguments for `generate`, for one loaded model.

    `compile=False` keeps the static cache but runs the decode step eagerly (MPS, or no compiler).
    """

    model: Any
    device: str
    compile: bool = True

    def __post_init__(self) -> None:
        self.context_length = int(self.model.config.text_config.max_position_embeddings)
        # The reusable cache and its (batch size, length): one only, so memory stays bounded
        # when batch sizes vary (a last short batch, an out-of-memory split).
        self._shared: tuple[tuple[int, int], Any] | None = None
        self._compile_config = None
        if self.compile:
            from transformers import CompileConfig

            # fullgraph=False: a graph break degrades speed, never correctness. dynamic=False: one
            # graph per (batch, bucket) rather than symbolic shapes (CUDA graphs need static ones).
            mode = "reduce-overhead" if self.device.startswith("cuda") else "default"
            config = CompileConfig(fullgraph=False, dynamic=False, mode=mode)
            config._compile_all_devices = True  # transformers compiles on CUDA only unless told
            self._compile_config = config

    @classmethod
    def for_engine(cls, model, device: str, home: Path, *, compile: bool = True) -> FastPath:
        """The fast path for a loaded model; compilation off where torch.compile is not reliable (MPS)."""
        compile = compile and not device.startswith("mps")
        if compile:
            use_compile_cache(home)
        return cls(model, device, compile=compile)

    def can_reuse(self, kv, needed: int) -> bool:
        """Whether a cache left by an earlier turn can take this turn (`needed` = prompt + new tokens).

        A DynamicCache (a turn run before the fast path was on) or a static cache too short for
        this turn cannot: the caller then drops the reuse and recomputes into a new cache.
        """
        from transformers import StaticCache

        return isinstance(kv, StaticCache) and kv.get_max_length() >= needed

    def new_cache(self, batch_size: int, needed: int, *, shared: bool = True):
        """An empty StaticCache for `batch_size` rows of up to `needed` tokens (bucketed).

        `shared`: the caller keeps no reference after `generate` returns, so the one reusable cache
        is reset and handed out when its shape fits. A chat's PromptCache must get its own
        (shared=False): a later request would otherwise overwrite the KV it keeps.
        """
        import torch
        from transformers import StaticCache

        key = (batch_size, bucket(needed, self.context_length))
        if shared and self._shared is not None and self._shared[0] == key:
            cache = self._shared[1]
            with torch.inference_mode():  # its tensors were made under generation's inference mode
                cache.reset()
            return cache
        if shared:
            self._shared = None  # freed before the new one is allocated
        # The layers size themselves (batch, heads, length) on first use (lazy initialisation).
        cache = StaticCache(config=self.model.config, max_cache_len=key[1])
        if shared:
            self._shared = (key, cache)
        return cache

    def generate_kwargs(self, *, batch_size: int, needed: int, cache=None, keep: bool = False) -> dict:
        """Extra `generate` kwargs: the cache (`cache` if given, else a bucketed static one) and
        the compile config.

        `needed` is the longest row's prompt tokens plus max_new_tokens; `keep`: the caller keeps
        the cache after this call (a chat), so it must not be the shared one.
        """
        if cache is None:
            cache = self.new_cache(batch_size, needed, shared=not keep)
        kwargs: dict = {"cache": cache}
        if self._compile_config is not None:
            kwargs["compile_config"] = self._compile_config
        else:
            kwargs["disable_compile"] = True  # never let transformers auto-compile behind our back
        return kwargs


def wanted(setting: bool | None, *, prefer_fast: bool, device: str) -> bool:
    """`--compile/--no-compile` wins; unset, the fast path is on where it pays: on CUDA, for callers
    that generate many times (chat and batch pass prefer_fast; one `ask` does not). Never by
    default on CPU: the first compile takes tens of seconds there, more than a chat on a tiny model
    ever saves."""
    if setting is not None:
        return setting
    return prefer_fast and device.startswith("cuda")
