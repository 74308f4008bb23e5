"""`--quantize int8|int4`: weight-only quantization with torchao, as on the DeepSeek-VL model card.

The language model's linear layers are quantized while the weights load (`TorchAoConfig` passed
as `quantization_config` to `from_pretrained`), so the bf16 copy never sits whole in GPU memory.
The vision towers and the aligner stay in bf16: they run once per image, so quantizing them saves
little time and costs accuracy; batch-1 decode reads only the language model, which is what int4
(~4x fewer bytes per token) speeds up. lm_head (0.8 GB of the 13.3 GB read per token) and the
embeddings also stay unquantized, for accuracy.

Limits: CUDA only. int4 uses torchao's tile-packed layout for the tinygemm kernel
(`aten._weight_int4pack_mm`), which needs bf16 activations and in_features divisible by the group
size (128; every 7B/1.3B linear layer is). Quantized models work with the fast path (torchao
tensors are compile-friendly).
"""

from __future__ import annotations

from dsvl_cli.errors import UsageError

INT4_GROUP_SIZE = 128
# Module name prefixes left in the model's dtype: the image encoders, the projector, lm_head.
KEEP_UNQUANTIZED = [
    "model.vision_model",
    "model.high_res_vision_model",
    "model.high_res_vision_neck",
    "model.high_res_vision_proj",
    "model.aligner",
    "lm_head",  # named explicitly: a custom list replaces transformers' default, which keeps it
]


def check(kind: str, device: str, dtype) -> None:
    """Raise a clear UsageError where `--quantize kind` cannot run; return quietly where it can."""
    if not device.startswith("cuda"):
        raise UsageError(f"--quantize {kind}: needs a CUDA GPU (device is {device}); "
                         "drop --quantize to run unquantized")
    if not torchao_available():
        raise UsageError(f"--quantize {kind}: needs torchao, which is not installed "
                         "(pip install torchao), or drop --quantize")
    import torch

    if kind == "int4" and dtype != torch.bfloat16:
        raise UsageError(f"--quantize int4: needs --dtype bfloat16 (got {str(dtype).removeprefix('torch.')}); "
                         "torchao's int4 kernel takes bf16 activations")


def torchao_available() -> bool:
    from importlib.util import find_spec

    return find_spec("torchao") is not None


def quant_type(kind: str):
    """torchao's config object for `kind` (torchao >= 0.12 API)."""
    if kind == "int8":
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig()
    if kind == "int4":
        from torchao.quantization import Int4WeightOnlyConfig

        try:
            return Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE, int4_packing_format="tile_packed_to_4d")
        except TypeError:  # older torchao: tinygemm's tile-packed layout is the only int4 layout
            return Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE)
    raise UsageError(f"--quantize {kind!r}: use int8 or int4")


def quantization_config(kind: str):
    """The `quantization_config` for `from_pretrained`."""
    from transformers import TorchAoConfig

    return TorchAoConfig(quant_type=quant_type(kind), modules_to_not_convert=list(KEEP_UNQUANTIZED))
