"""One prompt's prefill on the warm engine's caches: what the prefix cache holds of it is taken, the
rest runs through the model, the pictures after the cached part with their features from the
image-feature cache. Both the engine loop's rows (engine/loop.py) and decisions' shared input
(engine/decisions.py) start here, so a chat turn can reuse a decision's input and the reverse."""

from __future__ import annotations

from dsvl_cli.engine.features import ImageFeatureCache, Picture
from dsvl_cli.engine.kv import cache_of
from dsvl_cli.engine.prefix_cache import PrefixCache


def prefill(engine, ids: list[int], pictures: list[Picture], prefix: PrefixCache, features: ImageFeatureCache):
    """(the model's output over `ids`: the last token's logits and a cache holding the KV of all of
    `ids`; how many leading tokens came from `prefix`). Call under torch.inference_mode()."""
    import torch
    from transformers import DynamicCache

    model = engine.model
    spans = engine.image_spans(ids)
    entry, keep = prefix.lookup(ids, spans, [p.digest for p in pictures])
    cache = cache_of(model.config, entry.slices(keep)) if entry is not None else DynamicCache(config=model.config)
    tensor = torch.tensor([ids], device=model.device)
    inputs = {"input_ids": tensor[:, keep:], "attention_mask": torch.ones_like(tensor),
              "position_ids": torch.arange(keep, len(ids), device=model.device)[None]}
    later = [pictures[k] for k, (start, _) in enumerate(spans) if start >= keep]
    if later:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features.features(model, later))}
    return model(**inputs, cache=cache, use_cache=True, logits_to_keep=1), keep
