"""Build a DeepSeek-VL model with the real shapes and random weights, directly on the device.

Nothing is downloaded. `tiny` is dsvl's own tiny-random (built offline into DSVL_HOME). `1.3b` and
`7b` come from the shapes file (`deepseek_vl_shapes.json` here, a copy of
`../shared/reference/deepseek_vl_shapes.json` that travels with the repo; the configs the hub
checkpoints were converted with), instantiated under `torch.device(device)` in the benchmark dtype,
so a 7B never passes through CPU memory. The tokenizer is tiny-random's byte-level BPE (the real one
cannot be fetched): prompts tokenise into a similar number of tokens, and the image token id is
remapped to it. Speed does not depend on the weights' values, only on their shapes; EOS is
suppressed so every run decodes exactly the tokens asked for.

The model is also saved to a folder (safetensors + processor) for the load-to-first-token row.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

DEFAULT_SHAPES = Path(__file__).resolve().parent / "deepseek_vl_shapes.json"
SHAPE_KEYS = {"1.3b": "deepseek-vl-1.3b-chat", "7b": "deepseek-vl-7b-chat"}
IMAGENET_STANDARD = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
OPENAI_CLIP = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])


def load_shapes(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SystemExit(f"bench: cannot read the shapes file {path}: {exc.strerror}; pass --shapes PATH") from None


def _image_processor_class(name: str):
    """The fast (torchvision) image processor when torchvision is installed, else the PIL one:
    what `AutoProcessor` picks for the hub checkpoints, so every way preprocesses as it would there."""
    import transformers
    from transformers.utils import is_torchvision_available

    return getattr(transformers, name if is_torchvision_available() else name + "Pil")


def _configs(entry: dict, tokenizer):
    """(config, model class, processor) for one shapes-file entry, ids remapped to `tokenizer`."""
    from dsvl_cli.models import tiny_random

    hybrid = "high_res_vision_config" in entry
    config_cls, model_cls, processor_cls = tiny_random.architecture(hybrid)
    text = {**entry["text_config"], **tiny_random.special_ids(tokenizer)}
    text.setdefault("num_key_value_heads", text["num_attention_heads"])
    vision = entry["vision_config"]
    common = dict(text_config=text, vision_config=vision, tie_word_embeddings=False,
                  image_token_id=tokenizer.convert_tokens_to_ids(tiny_random.IMAGE_TOKEN))
    size = {"height": vision["image_size"], "width": vision["image_size"]}
    n_image_tokens = (vision["image_size"] // vision["patch_size"]) ** 2
    if hybrid:
        ImageProcessor = _image_processor_class("DeepseekVLHybridImageProcessor")
        sam = entry["high_res_vision_config"]
        config = config_cls(high_res_vision_config=sam, **common)
        high = {"height": sam["image_size"], "width": sam["image_size"]}
        image_processor = ImageProcessor(size=size, high_res_size=high, image_mean=IMAGENET_STANDARD[0],
                                         image_std=IMAGENET_STANDARD[1], high_res_image_mean=OPENAI_CLIP[0],
                                         high_res_image_std=OPENAI_CLIP[1], resample=2)
    else:
        ImageProcessor = _image_processor_class("DeepseekVLImageProcessor")
        config = config_cls(**common)
        image_processor = ImageProcessor(size=size, image_mean=IMAGENET_STANDARD[0], image_std=IMAGENET_STANDARD[1])
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer,
                              chat_template=tiny_random.chat_template(), num_image_tokens=n_image_tokens)
    return config, model_cls, processor


def suppress_eos(model) -> None:
    """Every run decodes exactly max_new_tokens: EOS can never be picked (all ways share this)."""
    eos = model.generation_config.eos_token_id
    eos_ids = eos if isinstance(eos, list) else [eos]
    model.generation_config.suppress_tokens = sorted({*(model.generation_config.suppress_tokens or []), *eos_ids})


def build(shape: str, device: str, dtype, workdir: Path, shapes_file: Path) -> tuple:
    """(model, processor, folder, build_s): the model on `device` in `dtype`, saved in `folder`."""
    import torch

    from dsvl_cli.engine import runtime
    from dsvl_cli.models import tiny_random

    started = time.perf_counter()
    runtime.quiet_transformers()
    if shape == "tiny":
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = tiny_random.ensure_built("tiny-random", runtime.dsvl_home())
        processor = AutoProcessor.from_pretrained(folder)
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype, device_map=device).eval()
    else:
        entry = load_shapes(shapes_file)[SHAPE_KEYS[shape]]
        config, model_cls, processor = _configs(entry, tiny_random.build_tokenizer())
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                model = model_cls(config).eval()
        finally:
            torch.set_default_dtype(previous)
        ids = processor.tokenizer
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(model.generation_config, key, getattr(ids, key))
        folder = workdir / f"random-{shape}"
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    suppress_eos(model)
    return model, processor, folder, time.perf_counter() - started


def bytes_read_per_token(model, quantize: str | None = None) -> int:
    """Weight bytes one decode step reads: the language model and lm_head (not the embedding
    table, of which a step reads one row, nor the vision towers, which run once per image).

    With `quantize` ("int8"/"int4", counted on the unquantized model): the language model's 2-D
    linear weights at 1 or 0.5 bytes a weight plus a bf16 scale (and, int4, zero point) per group
    (int8: per output row), as torchao stores them; lm_head and norms stay as they are
    (quantize.KEEP_UNQUANTIZED)."""
    from dsvl_cli.engine.quantize import INT4_GROUP_SIZE

    total = 0
    for name, param in model.named_parameters():
        if "vision" in name or "aligner" in name or "embed_tokens" in name:
            continue
        if quantize and param.dim() == 2 and not name.startswith("lm_head"):
            if quantize == "int8":
                total += param.numel() + param.shape[0] * 2
            else:
                total += param.numel() // 2 + (param.numel() // INT4_GROUP_SIZE) * 2 * 2
            continue
        total += param.numel() * param.element_size()
    return total


def kv_bytes_per_token(model) -> int:
    """KV-cache bytes per token of context (all layers, keys and values)."""
    text = model.config.text_config
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * heads * head_dim * model.dtype.itemsize
