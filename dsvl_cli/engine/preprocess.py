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

A photo that intake left at its JPEG decoding scale (marked INTAKE_KEY: 1512 px for a 12 MP photo)
gets its one resize to the SAM size here, in torch (bicubic with antialiasing on uint8, within
~70 dB of Pillow's; ~6 ms against Pillow's ~25 ms on two cores), then the pad and the SigLIP
resize in torch too: these are not bit-identical to the processor's Pillow resizes, which only
pictures decoded exactly (up to ~4 MP, or --exact-pixels) are held to.
"""

from __future__ import annotations

from typing import Any

from dsvl_cli.images.decode import INTAKE_KEY

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
    if high["width"] != side or low["height"] != low["width"]:
        return None
    if image.info.get(INTAKE_KEY) is not None and max(image.size) > side:
        return _intake_pixels(processor, image, side, low["height"])
    if max(image.size) != side or min(image.size) < processor.min_size:
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


def _intake_pixels(processor, image, side: int, small: int) -> dict[str, Any]:
    """The processor's steps in torch for a picture larger than `side`: resize (long side `side`,
    the processor's rounding and min_size), pad centred on its background colour, resize to
    `small`, rescale + normalise."""
    import numpy as np
    import torch
    from torch.nn.functional import interpolate

    width, height = image.size
    ratio = side / max(width, height)
    size = (max(round(height * ratio), processor.min_size), max(round(width * ratio), processor.min_size))
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0)  # (1, 3, h, w) uint8, a writable copy
    fitted = interpolate(pixels, size=size, mode="bicubic", antialias=True)
    square = torch.tensor(processor.high_res_background_color, dtype=torch.uint8).view(1, 3, 1, 1)
    square = square.expand(1, 3, side, side).clone()
    top, left = (side - size[0]) // 2, (side - size[1]) // 2
    square[:, :, top:top + size[0], left:left + size[1]] = fitted
    low = interpolate(square, size=(small, small), mode="bicubic", antialias=True)
    return {"pixel_values": _normalised_tensor(low, processor.rescale_factor, processor.image_mean,
                                               processor.image_std),
            "high_res_pixel_values": _normalised_tensor(square, processor.rescale_factor, processor.high_res_image_mean,
                                                        processor.high_res_image_std)}


def _normalised(image, scale: float, mean, std):
    """(1, 3, H, W) contiguous float32: (pixel * scale - mean) / std as one multiply and one add per
    value, in place on the one float copy (the uint8 HWC -> CHW permute is folded into that copy)."""
    import numpy as np
    import torch

    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W) view of a copy
    return _normalised_tensor(pixels, scale, mean, std)


def _normalised_tensor(pixels, scale: float, mean, std):
    """(1, 3, H, W) uint8 -> contiguous float32 (pixel * scale - mean) / std."""
    import torch

    mean = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    gain, offset = (scale / std).float(), (-mean / std).float()
    return pixels.to(torch.float32, memory_format=torch.contiguous_format).mul_(gain).add_(offset)
