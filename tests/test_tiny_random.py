"""tiny-random is a real DeepSeek-VL model, built offline, deterministically, loadable by transformers."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

from conftest import reference_generate


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_build_is_deterministic(tmp_path, tiny_folder):
    from dsvl_cli.models import tiny_random

    again = tmp_path / "again"
    again.mkdir()
    tiny_random.build(again, tiny_random.SPECS["tiny-random"])
    assert _digest(again) == _digest(tiny_folder)


def test_folder_loads_like_a_hub_checkpoint(tiny_folder, tiny13_folder):
    from transformers import AutoConfig, AutoProcessor

    hybrid = AutoConfig.from_pretrained(tiny_folder)
    plain = AutoConfig.from_pretrained(tiny13_folder)
    assert type(hybrid).__name__ == "DeepseekVLHybridConfig"
    assert type(plain).__name__ == "DeepseekVLConfig"
    processor = AutoProcessor.from_pretrained(tiny_folder)
    vision = hybrid.vision_config
    assert processor.num_image_tokens == (vision.image_size // vision.patch_size) ** 2
    assert processor.image_token_id == hybrid.image_token_id
    assert hybrid.text_config.vocab_size >= len(processor.tokenizer)
    assert (tiny_folder / "model.safetensors").exists()
    assert not list(tiny_folder.glob("*.bin")) and not list(tiny_folder.glob("*.py"))
    assert "You are a helpful language and vision assistant" in processor.chat_template


def test_answers_vary_with_the_image(reference):
    model, processor = reference
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    answers = {
        colour: reference_generate(model, processor, messages, [Image.new("RGB", (40, 30), colour)], 16)
        for colour in ("red", "blue", "white")
    }
    assert len({tuple(a) for a in answers.values()}) == 3
    for ids in answers.values():
        assert len(set(ids)) > 3, "greedy output must not be one repeated token"
