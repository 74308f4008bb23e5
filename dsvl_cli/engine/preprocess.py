"""Preprocessing a picture that intake already brought to the model's size, in one pass.

DeepSeek-VL-Hybrid's image processor (PIL backend) resizes each picture so that its long side is
the SAM size (1024 px), pads it to a square with its mean colour, resizes that square to the SigLIP
size (384 px), then rescales and normalises both; every resize goes numpy -> PIL -> numpy, and
rescaling and normalising are separate float passes. For a picture that images/decode.py already
shrank to the SAM size on its long side (every photo over ~4 MP), the first resize keeps the size
and is pure overhead. `hybrid_pixels` does the rest once: the pad in PIL, one resize to the SigLIP
size (the same Pillow filter on the same uint8 pixels the processor resizes), and rescale +
normalise fused into one multiply-add per tensor. The tensors equal the processor's to float
rounding (tested); any other picture or processor returns None and goes through the processor.
"""

from __future__ import annotations

from typing import Any

_HYBRID_PIL = "DeepseekVLHybridImageProcessorPil"


def pixels(processor, image) -> dict[str, Any]:
    """The image processor's tensors for one RGB PIL picture (1, 3, H, W): the one preprocessing
    path (the engine's, and `dsvl batch --ray`'s Ray tasks, which hold only the processor)."""
    fused = hybrid_pixels(processor, image)  # a photo intake already shrank: one pass
    return fused if fused is not None else dict(processor(images=[image], return_tensors="pt"))


def hybrid_pixels(processor, image) -> dict[str, Any] | None:
    """pixel_values (1, 3, S, S) and high_res_pixel_values (1, 3, H, H) for an RGB PIL `image`
    whose long side is already H (the processor's high_res_size), else None."""
    if type(processor).__name__ != _HYBRID_PIL or image.mode != "RGB":
        return None
    if not (processor.do_resize and processor.do_pad and processor.do_rescale and processor.do_normalize):
        return None
    high, low = processor.high_res_size, processor.size
    side = high["height"]
    if high["width"] != side or low["height"] != low["width"] or max(image.size) != side \
            or min(image.size) < processor.min_size:
        return None
    from PIL import Image

    square = image
    if image.width != image.height:  # centred on the mean colour, as the processor pads
        square = Image.new("RGB", (side, side), tuple(processor.high_res_background_color))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    small = square.resize((low["width"], low["height"]), resample=processor.resample)
    return {"pixel_values": _normalised(small, processor.rescale_factor, processor.image_mean, processor.image_std),
            "high_res_pixel_values": _normalised(square, processor.rescale_factor, processor.high_res_image_mean,
                                                 processor.high_res_image_std)}


def _normalised(image, scale: float, mean, std):
    """(1, 3, H, W) contiguous float32: (pixel * scale - mean) / std as one multiply and one add per
    value, in place on the one float copy (the uint8 HWC -> CHW permute is folded into that copy)."""
    import numpy as np
    import torch

    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # (3, H, W) uint8 view of a writable copy
    mean = torch.tensor(mean, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(std, dtype=torch.float64).view(3, 1, 1)
    gain, offset = (scale / std).float(), (-mean / std).float()
    return pixels.to(torch.float32, memory_format=torch.contiguous_format).mul_(gain).add_(offset).unsqueeze(0)
