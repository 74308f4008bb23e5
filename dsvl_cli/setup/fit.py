"""Will a model fit this GPU? Computed from the model's own config, not from a table.

The parameter count comes from instantiating the model class on torch's `meta` device (shapes
only, no memory, exact for any config); bytes per weight from the dtype or the quantization
(`engine/quantize.py`: weight-only int8 keeps one bf16 scale per output row, int4 a bf16 scale and
zero point per group of 128, and both leave the vision towers, the aligner, the embeddings and
lm_head in bf16); the KV cache per token from the text model's layers x KV heads x head dim x 2
(K and V). A model fits when its weights, a fixed reserve (CUDA context, one image's prefill
activations, allocator slack) and the KV cache for MIN_CONTEXT tokens fit in the GPU's memory;
`max_context` says how many tokens of KV cache the rest holds (capped at the model's own context).

Where the config comes from: the model's folder (the Hugging Face cache or a tiny-random build),
else the shapes of the two published checkpoints shipped with dsvl (deepseek_vl_shapes.json, the
configs transformers' conversion scripts write), so `dsvl doctor` answers before any download.
Limits: an estimate to about a GiB; activations of very many images at once are not counted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

GIB = 2**30
RESERVE_BYTES = 1 * GIB
MIN_CONTEXT = 2048  # one image (576 tokens), a prompt and a 512-token answer, with room to spare
MODES = ("bf16", "int8", "int4")
SHAPES = {"deepseek-community/deepseek-vl-7b-chat": "deepseek-vl-7b-chat",
          "deepseek-community/deepseek-vl-1.3b-chat": "deepseek-vl-1.3b-chat"}


@dataclass(frozen=True)
class Footprint:
    params: int
    quantizable_params: int  # weights of the language model's linear layers (not lm_head)
    quantizable_rows: int  # their output features: one int8 scale each
    kv_elements_per_token: int  # layers x KV heads x head dim x 2
    context_length: int
    hybrid: bool

    def weight_bytes(self, mode: str) -> int:
        rest = (self.params - self.quantizable_params) * 2
        if mode == "bf16":
            return self.params * 2
        if mode == "int8":
            return rest + self.quantizable_params + self.quantizable_rows * 2
        if mode == "int4":
            from dsvl_cli.engine.quantize import INT4_GROUP_SIZE

            return rest + self.quantizable_params // 2 + (self.quantizable_params // INT4_GROUP_SIZE) * 2 * 2
        raise ValueError(mode)

    @property
    def kv_bytes_per_token(self) -> int:  # the KV cache stays bf16 in every mode
        return self.kv_elements_per_token * 2

    def fit(self, mode: str, memory: int) -> dict:
        weights = self.weight_bytes(mode)
        room = memory - weights - RESERVE_BYTES
        context = max(0, min(self.context_length, room // self.kv_bytes_per_token))
        return {"mode": mode, "weights_bytes": weights, "reserve_bytes": RESERVE_BYTES,
                "kv_bytes_per_token": self.kv_bytes_per_token, "max_context": int(context),
                "fits": context >= MIN_CONTEXT,
                "needs_bytes": weights + RESERVE_BYTES + MIN_CONTEXT * self.kv_bytes_per_token}

    def to_dict(self) -> dict:
        return {**asdict(self), "kv_bytes_per_token": self.kv_bytes_per_token}


def find_config(name: str, folder: Path | None) -> tuple[dict, str] | None:
    """(config dict, where it came from) for `name`: its folder's config.json, else the shipped shapes."""
    if folder is not None:
        try:
            return json.loads((folder / "config.json").read_text(encoding="utf-8")), str(folder / "config.json")
        except (OSError, ValueError):
            pass
    key = SHAPES.get(name)
    if key is None:
        return None
    entry = json.loads(resources.files("dsvl_cli.setup").joinpath("deepseek_vl_shapes.json").read_text("utf-8"))[key]
    hybrid = "high_res_vision_config" in entry
    config = {k: v for k, v in entry.items() if k.endswith("_config")}
    return {"model_type": "deepseek_vl_hybrid" if hybrid else "deepseek_vl", **config}, "dsvl's copy of its shapes"


def footprint(config: dict) -> Footprint:
    """Count the model's parameters on the meta device (torch and transformers are imported here)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from dsvl_cli.engine.quantize import KEEP_UNQUANTIZED
    from dsvl_cli.engine.runtime import quiet_transformers

    quiet_transformers()
    values = dict(config)
    kind = values.pop("model_type")
    cfg = AutoConfig.for_model(kind, **values)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(cfg)
    params = sum(p.numel() for p in model.parameters())
    quantizable = rows = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not any(name.startswith(k) for k in KEEP_UNQUANTIZED):
            quantizable += module.weight.numel()
            rows += module.out_features
    text = cfg.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return Footprint(params=params, quantizable_params=quantizable, quantizable_rows=rows,
                     kv_elements_per_token=text.num_hidden_layers * kv_heads * head_dim * 2,
                     context_length=text.max_position_embeddings, hybrid=kind == "deepseek_vl_hybrid")


def parse_size(text: str, flag: str = "--gpu-memory") -> int:
    """`24GiB`, `24G`, `80GB`, `512MiB` or bytes -> bytes (G and GB count as GiB, as GPU specs mean)."""
    import re

    from dsvl_cli.errors import UsageError

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise UsageError(f"{flag} {text!r}: use a size such as 24GiB, 80G or 16000MiB")
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)
