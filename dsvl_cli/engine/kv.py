"""KV tensors for the engine loop: the running rows' cache, left-padded, and one row's own slices.

Why by hand: transformers' DynamicCache holds one (B, heads, L, head_dim) key and value tensor per
layer, and has no way to add a row that was prefilled on its own or drop one that finished. The
rows here share one DynamicCache whose tensors are replaced when a row joins (both sides padded on
the left to the longer one, as `generate` pads a batch) or leaves (the rows kept selected, and the
leading columns that only pads still fill cut off). `mask` (B, L) is 1 where a row holds a real
token; the model builds its causal + padding mask from it, and each row's position ids come from
its own count of real tokens, so a row's answer is the one it would get alone (tested against
plain `generate`).

A row's real tokens are always the last `real` columns: it joins right-aligned and every decode
step adds one column for every row.

No torch at import.
"""

from __future__ import annotations

from typing import Any

Pairs = list[tuple[Any, Any]]  # per layer: (keys, values), each (B, heads, L, head_dim)


def pairs_of(cache) -> Pairs:
    return [(layer.keys, layer.values) for layer in cache.layers]


def cache_of(config, pairs: Pairs):
    """A DynamicCache holding `pairs` (no copy)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    if len(cache.layers) != len(pairs):
        raise ValueError(f"the model has {len(cache.layers)} cache layers, the KV {len(pairs)}")
    for layer, (keys, values) in zip(cache.layers, pairs):
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
    return cache


def nbytes(pairs: Pairs) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in pairs)


def _pad_left(tensor, columns: int):
    if columns <= 0:
        return tensor
    import torch

    shape = list(tensor.shape)
    shape[-2] = columns
    return torch.cat([tensor.new_zeros(shape), tensor], dim=-2)


class RowsKV:
    """The running rows' cache and padding mask (see the module docstring)."""

    def __init__(self, config):
        self.config = config
        self.cache = None  # a DynamicCache of B rows, or None when no row runs
        self.mask = None  # (B, L) long

    @property
    def rows(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    @property
    def nbytes(self) -> int:
        return 0 if self.cache is None else nbytes(pairs_of(self.cache))

    def join(self, row_cache, real: int) -> None:
        """Add one row (its own cache of `real` tokens, batch 1) as the last row."""
        import torch

        row = pairs_of(row_cache)
        if self.cache is None:
            self.cache = row_cache
            self.mask = torch.ones((1, real), dtype=torch.long, device=row[0][0].device)
            return
        width = int(self.mask.shape[1])
        total = max(width, real)
        joined = [(torch.cat([_pad_left(k, total - width), _pad_left(rk, total - real)]),
                   torch.cat([_pad_left(v, total - width), _pad_left(rv, total - real)]))
                  for (k, v), (rk, rv) in zip(pairs_of(self.cache), row)]
        zeros = self.mask.new_zeros
        mask = torch.cat([torch.cat([zeros((self.rows, total - width)), self.mask], dim=1),
                          torch.cat([zeros((1, total - real)), self.mask.new_ones((1, real))], dim=1)])
        self.cache, self.mask = cache_of(self.config, joined), mask

    def step_mask(self):
        """The mask for one decode step: one more real column for every row."""
        import torch

        return torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)

    def stepped(self, mask) -> None:
        """The decode step with `mask` ran: the cache has grown by that column."""
        self.mask = mask

    def row_pairs(self, row: int) -> Pairs:
        """Row `row`'s real tokens (views: clone them to keep them past the next join or keep)."""
        real = int(self.mask[row].sum())
        return [(k[row:row + 1, :, -real:], v[row:row + 1, :, -real:]) for k, v in pairs_of(self.cache)]

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order); cut the leading columns no kept row uses."""
        import torch

        if not rows:
            self.cache = self.mask = None
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        used = int(mask.sum(dim=1).max())
        start = int(mask.shape[1]) - used
        pairs = [(k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
                 for k, v in pairs_of(self.cache)]
        self.cache, self.mask = cache_of(self.config, pairs), mask[:, start:]
