"""Build the offline `tiny-random` models: real DeepSeek-VL architectures, tiny shapes, random weights.

They go through the same processor, chat template, `from_pretrained` and `generate` path as the
7B, so every test and every try-out runs offline. Their answers are noise. A build is deterministic:
the same transformers/tokenizers versions write the same bytes every time.

Shapes keep the invariants transformers relies on: num_image_tokens ==
(image_size // patch_size) ** 2, processor `size` == SigLIP image_size, `high_res_size` == SAM
image_size, global_attn_indexes inside the SAM layers, image_token_id == the tokenizer's id of
<image_placeholder>, text vocab >= len(tokenizer).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
IMAGE_TOKEN = "<image_placeholder>"
# Larger than the default 0.02 so that greedy output varies and depends on the image.
INIT_STD = 0.3
SEED = 1234


@dataclass(frozen=True)
class TinySpec:
    hybrid: bool
    image_size: int  # SigLIP input size (the processor's `size`)
    patch_size: int
    high_res_size: int = 0  # SAM input size (hybrid only)
    high_res_patch: int = 8
    hidden: int = 64
    layers: int = 2

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


SPECS: dict[str, TinySpec] = {
    "tiny-random": TinySpec(hybrid=True, image_size=32, patch_size=8, high_res_size=64),
    "tiny-random-1.3b": TinySpec(hybrid=False, image_size=32, patch_size=8),
    # The real image sizes (384/1024 px, 576 image tokens) with tiny layers: for CPU measurements.
    "tiny-random-fullres": TinySpec(hybrid=True, image_size=384, patch_size=16, high_res_size=1024, high_res_patch=16),
}
BUILD_VERSION = "v1"


def _corpus() -> list[str]:
    words = (
        "the a an of and to in is it this that what which who where when how why image picture photo "
        "describe colour color red green blue yellow black white orange purple square circle triangle "
        "shape chart bar graph sky sun cloud tree house cat dog person car street text number one two "
        "three left right top bottom above below small large bright dark light background foreground "
        "User Assistant You are helpful language vision assistant able understand visual content "
        "provides assist variety tasks using natural there here with on at by for from as be has have"
    ).split()
    lines = []
    for i in range(400):  # a fixed pseudo-random walk through the words: deterministic
        lines.append(" ".join(words[(i * 7 + j * 13) % len(words)] for j in range(12)) + ".")
    return lines


def build_tokenizer():
    """A real byte-level BPE tokenizer trained offline, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=[BOS, EOS, IMAGE_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    # Like DeepSeek's tokenizer: the template has no BOS, the post-processor adds it.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        model_max_length=4096,
    )


def _unprintable_byte_tokens(tokenizer) -> list[int]:
    """Ids of the single-byte tokens that are not printable ASCII (tab and newline allowed)."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda ch: _BYTE_OF[ch])
    bad = [ch for ch in alphabet if not (32 <= _BYTE_OF[ch] < 127 or _BYTE_OF[ch] in (9, 10))]
    return sorted(tokenizer.convert_tokens_to_ids(ch) for ch in bad)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-character table used by byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_OF = {ch: b for b, ch in _bytes_to_unicode().items()}


def chat_template() -> str:
    return resources.files("dsvl_cli.models").joinpath("chat_template.jinja").read_text(encoding="utf-8")


def _text_config(spec: TinySpec, vocab: int, ids: dict) -> dict:
    return dict(
        model_type="llama",
        hidden_size=spec.hidden,
        intermediate_size=spec.hidden * 2,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_hidden_layers=spec.layers,
        vocab_size=vocab,
        max_position_embeddings=4096,
        **ids,
    )


def _vision_config(spec: TinySpec) -> dict:
    return dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        num_attention_heads=2,
        num_hidden_layers=2,
        vision_use_head=False,
    )


def _sam_config(spec: TinySpec) -> dict:
    return dict(
        model_type="sam_vision_model",
        hidden_size=32,
        intermediate_size=64,
        mlp_dim=64,
        output_channels=16,
        image_size=spec.high_res_size,
        patch_size=spec.high_res_patch,
        num_attention_heads=2,
        num_hidden_layers=2,
        global_attn_indexes=[1],
        window_size=4,
    )


def architecture(hybrid: bool) -> tuple[type, type, type]:
    """(config, model, processor) classes of DeepSeek-VL-Hybrid (SigLIP + SAM, the 7B) or of
    DeepSeek-VL (SigLIP only, the 1.3B)."""
    import transformers

    prefix = "DeepseekVLHybrid" if hybrid else "DeepseekVL"
    return tuple(getattr(transformers, prefix + part) for part in ("Config", "ForConditionalGeneration", "Processor"))


def special_ids(tokenizer) -> dict[str, int]:
    """The ids a model config and generation config take from the tokenizer."""
    return dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)


def build(folder: Path, spec: TinySpec) -> None:
    """Write a complete model folder (config, safetensors, tokenizer, processor, template)."""
    import torch

    from dsvl_cli.models.quiet import quiet_transformers

    quiet_transformers()
    tokenizer = build_tokenizer()
    ids = special_ids(tokenizer)
    config_cls, model_cls, processor_cls = architecture(spec.hybrid)
    common = dict(
        text_config=_text_config(spec, len(tokenizer), ids),
        vision_config=_vision_config(spec),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        tie_word_embeddings=False,
    )
    size = {"height": spec.image_size, "width": spec.image_size}
    if spec.hybrid:
        from transformers.models.deepseek_vl_hybrid.image_processing_pil_deepseek_vl_hybrid import (
            DeepseekVLHybridImageProcessorPil as ImageProcessor,
        )

        config = config_cls(high_res_vision_config=_sam_config(spec), **common)
        high = {"height": spec.high_res_size, "width": spec.high_res_size}
        image_processor = ImageProcessor(size=size, high_res_size=high)
    else:
        from transformers.models.deepseek_vl.image_processing_pil_deepseek_vl import (
            DeepseekVLImageProcessorPil as ImageProcessor,
        )

        config = config_cls(**common)
        image_processor = ImageProcessor(size=size)

    torch.manual_seed(SEED)
    model = model_cls(config).eval()
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * INIT_STD)
    for key, value in ids.items():
        setattr(model.generation_config, key, value)
    # Random weights would otherwise emit raw control and stray UTF-8 bytes (even ESC) into terminals.
    model.generation_config.suppress_tokens = _unprintable_byte_tokens(tokenizer)
    processor = processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=chat_template(),
        num_image_tokens=spec.num_image_tokens,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "README.md").write_text(
        "# dsvl tiny-random\n\nA real DeepSeek-VL architecture with tiny shapes and RANDOM weights, built "
        "offline by dsvl for tests and try-outs. Its answers are noise.\n",
        encoding="utf-8",
    )


def folder_of(name: str, cache_dir: Path) -> Path:
    """Where tiny model `name` is (or will be) built under DSVL_HOME `cache_dir`."""
    return cache_dir / "models" / f"{name}-{BUILD_VERSION}"


def ensure_built(name: str, cache_dir: Path) -> Path:
    """Return the folder of tiny model `name`, building it on first use (atomically)."""
    spec = SPECS[name]
    folder = folder_of(name, cache_dir)
    if (folder / "model.safetensors").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        build(tmp, spec)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: keep theirs
            if not (folder / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
