"""Photo intake: large images decoded at the size the model needs, small ones exactly as before.

The fast path (images/decode.py) must orient like `ImageOps.exif_transpose` on the full image,
stay close to the full decode after preprocessing (PSNR bound), and leave images under the
threshold bit for bit as the model card's way decodes them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from dsvl_cli.images import decode, load_image

from conftest import reference_generate

# Above INTAKE_MIN_PIXELS (4 MP): 2400 x 1800 = 4.3 MP, wide, with an asymmetric pattern so that
# every EXIF orientation gives a different picture.
BIG = (2400, 1800)
SMALL = (1600, 1200)  # 1.9 MP: the exact path


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth gradients, noise and a few hard-edged shapes."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x / w * 255, y / h * 255, (x * y) / (w * h) * 255], -1)
    img += rng.normal(0, 6, size=img.shape)
    img[: h // 3, : w // 4] = (250, 20, 20)  # a red block in the top-left corner: orientation marker
    img[h // 2:, w // 2: w // 2 + w // 10] = (20, 20, 240)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def save_jpeg(path, image: Image.Image, orientation: int = 1):
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, quality=92, exif=exif.tobytes())
    return str(path)


def seed_way(path) -> Image.Image:
    """How the model card loads an image: open, EXIF transpose, RGB."""
    with Image.open(path) as opened:
        return ImageOps.exif_transpose(opened).convert("RGB")


def psnr(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = ((a - b) ** 2).mean()
    span = a.max() - a.min()
    return float(10 * np.log10(span * span / mse)) if mse else float("inf")


@pytest.fixture(scope="module")
def hybrid_processor():
    """DeepSeek-VL-Hybrid's image processor at the real sizes (SigLIP 384, SAM 1024): no model needed."""
    from transformers.models.deepseek_vl_hybrid import image_processing_pil_deepseek_vl_hybrid as module

    return module.DeepseekVLHybridImageProcessorPil(size={"height": 384, "width": 384},
                                                     high_res_size={"height": 1024, "width": 1024})


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_exif_transpose_of_the_full_image(tmp_path, orientation):
    path = save_jpeg(tmp_path / f"o{orientation}.jpg", photo(BIG), orientation)
    fast, exact = load_image(path).image, load_image(path, exact=True).image
    assert decode.INTAKE_SIDE <= max(fast.size) < 2 * decode.INTAKE_SIDE and decode.INTAKE_KEY in fast.info
    assert np.array_equal(np.asarray(exact), np.asarray(seed_way(path)))  # the exact path is the seed's
    # Same orientation: the full decode, shrunk to the fast one's size, looks the same.
    assert (fast.width > fast.height) == (exact.width > exact.height)
    shrunk = exact.resize(fast.size, Image.Resampling.BICUBIC)
    assert psnr(shrunk, fast) > 30, orientation
    wrong = shrunk.transpose(Image.Transpose.ROTATE_180)
    assert psnr(wrong, fast) < 20  # a wrongly oriented picture would not pass the bound above


def test_images_under_the_threshold_are_bit_identical_to_the_seed_way(tmp_path, hybrid_processor):
    path = save_jpeg(tmp_path / "small.jpg", photo(SMALL, seed=1), orientation=6)
    ours, seed = load_image(path).image, seed_way(path)
    assert ours.size == seed.size == (SMALL[1], SMALL[0])
    assert np.array_equal(np.asarray(ours), np.asarray(seed))
    a = hybrid_processor(images=[ours], return_tensors="pt")
    b = hybrid_processor(images=[seed], return_tensors="pt")
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in ("pixel_values", "high_res_pixel_values"))


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_fast_intake_stays_close_to_the_exact_path_after_preprocessing(tmp_path, hybrid_processor, fmt):
    """The bound the fast path is held to (measured on this synthetic photo: ~50 dB high-res, ~57 dB
    low-res for JPEG; PNG similar). 40 dB is far below what a person or the model would notice."""
    image = photo(BIG, seed=2)
    path = tmp_path / f"big.{fmt}"
    if fmt == "jpeg":
        save_jpeg(path, image, orientation=8)
    else:
        image.save(path)
    from dsvl_cli.engine.preprocess import pixels

    fast, exact = load_image(str(path)).image, load_image(str(path), exact=True).image
    a = hybrid_processor(images=[exact], return_tensors="pt")
    b = pixels(hybrid_processor, fast)  # the engine's way: the last resize in torch
    for key in ("pixel_values", "high_res_pixel_values"):
        assert a[key].shape == b[key].shape
        assert psnr(a[key].numpy(), b[key].numpy()) > 40, key


def test_exact_pixels_flag_answers_as_plain_generate_on_the_full_decode(cli, reference, tmp_path):
    path = save_jpeg(tmp_path / "photo.jpg", photo(BIG, seed=3), orientation=3)
    result = cli(["ask", path, "Describe this image.", "-m", "tiny-random", "-n", "8", "--json", "--exact-pixels"])
    assert result.exit_code == 0, result.output
    model, processor = reference
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    ids = reference_generate(model, processor, messages, [seed_way(path)], 8)
    assert json.loads(result.stdout)["answer"] == processor.batch_decode([ids], skip_special_tokens=True)[0].lstrip()
    fast = cli(["ask", path, "Describe this image.", "-m", "tiny-random", "-n", "8", "--json"])
    assert fast.exit_code == 0 and json.loads(fast.stdout)["stats"]["generated_tokens"] == 8


def test_the_bomb_guard_still_checks_the_full_size(tmp_path, monkeypatch):
    from dsvl_cli.errors import ImageLoadError

    path = save_jpeg(tmp_path / "bomb.jpg", photo(BIG, seed=4))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BIG[0] * BIG[1] // 4)  # the full size is 4x the limit
    with pytest.raises(ImageLoadError) as err:
        load_image(path)
    assert "decompression bomb" in str(err.value)


@pytest.mark.parametrize("size", [(1024, 768), (768, 1024), (1024, 1024), (1024, 300)])
def test_one_pass_preprocessing_equals_the_processor(hybrid_processor, size):
    """A picture already at the SAM size skips the processor's no-op resize and its numpy/PIL round
    trips (engine/preprocess.py); the tensors are the processor's to float rounding."""
    import torch

    from dsvl_cli.engine.preprocess import hybrid_pixels

    image = photo(size, seed=5)
    expected = hybrid_processor(images=[image], return_tensors="pt")
    got = hybrid_pixels(hybrid_processor, image)
    for key in ("pixel_values", "high_res_pixel_values"):
        assert got[key].shape == expected[key].shape and got[key].dtype == torch.float32
        assert torch.allclose(got[key], expected[key], atol=1e-5), key


def test_other_pictures_and_processors_go_through_the_processor(hybrid_processor, engine):
    from dsvl_cli.engine.preprocess import hybrid_pixels

    assert hybrid_pixels(hybrid_processor, photo((800, 600))) is None  # not at the SAM size
    assert hybrid_pixels(hybrid_processor, photo((1024, 768)).convert("L")) is None
    tiny = engine.processor.image_processor  # tiny-random: its SAM size is 64 px
    assert hybrid_pixels(tiny, photo((64, 48))) is not None and hybrid_pixels(tiny, photo((65, 48))) is None


def test_a_large_jpeg_decodes_at_libjpeg_turbos_finer_scale(tmp_path):
    """3200 px: 3/8 (1200 px) is the smallest DCT scale >= 1024; Pillow's draft stops at 1/2 (1600 px)."""
    path = save_jpeg(tmp_path / "wide.jpg", photo((3200, 2400), seed=6))
    data = open(path, "rb").read()
    assert decode._turbo_decode(data, decode.INTAKE_SIDE).size == (1200, 900)
    with Image.open(path) as opened:
        decode._draft(opened, decode.INTAKE_SIDE)
        assert opened.size == (1600, 1200)
    loaded = load_image(path).image  # left at that scale for the engine's one resize
    assert loaded.size == (1200, 900) and loaded.info[decode.INTAKE_KEY] == str(decode.INTAKE_SIDE)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grey_and_cmyk_photos_take_the_intake_path_with_the_right_colours(tmp_path, mode):
    image = photo(BIG, seed=7).convert(mode)
    path = tmp_path / f"{mode}.jpg"
    image.save(path, quality=92)
    fast, exact = load_image(str(path)).image, load_image(str(path), exact=True).image
    assert fast.mode == exact.mode == "RGB" and decode.INTAKE_SIDE <= max(fast.size) < 2 * decode.INTAKE_SIDE
    assert psnr(exact.resize(fast.size, Image.Resampling.BICUBIC), fast) > 30


def test_a_truncated_large_jpeg_is_one_line_error(tmp_path):
    from dsvl_cli.errors import ImageLoadError

    path = save_jpeg(tmp_path / "cut.jpg", photo(BIG, seed=8))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ImageLoadError) as err:
        load_image(path)
    assert "truncated or corrupt" in str(err.value)


def test_the_engine_finishes_an_intake_picture_close_to_pillows_resize(tmp_path, hybrid_processor):
    """The last resize of a photo, in torch, against the same picture resized by Pillow and then
    preprocessed as before (the processor's own way, bit for bit for a 1024 px picture)."""
    from dsvl_cli.engine.preprocess import pixels

    path = save_jpeg(tmp_path / "p.jpg", photo(BIG, seed=9), orientation=6)
    fast = load_image(path).image
    resized = decode.downscaled(fast, decode.INTAKE_SIDE)
    ours, pillow = pixels(hybrid_processor, fast), hybrid_processor(images=[resized], return_tensors="pt")
    for key in ("pixel_values", "high_res_pixel_values"):
        assert ours[key].shape == pillow[key].shape and ours[key].is_contiguous()
        assert psnr(ours[key].numpy(), pillow[key].numpy()) > 45, key
    unmarked = fast.copy()
    unmarked.info.pop(decode.INTAKE_KEY)  # a user's own 1800 px picture: the processor's way, exactly
    expected = hybrid_processor(images=[unmarked], return_tensors="pt")
    assert all(np.array_equal(pixels(hybrid_processor, unmarked)[k].numpy(), expected[k].numpy()) for k in expected)


def test_keep_alive_sends_the_mark_so_its_server_preprocesses_as_a_local_run(tmp_path, hybrid_processor):
    from dsvl_cli.keepalive.client import KeepAliveEngine
    from dsvl_cli.engine.preprocess import pixels
    from dsvl_cli.images.cache import SourceCache

    class Sender(KeepAliveEngine):  # its way of sending pictures, without a server to talk to
        def __init__(self):
            self._uris = SourceCache(keep=4)

    loaded = load_image(save_jpeg(tmp_path / "p.jpg", photo(BIG, seed=10)))
    received = load_image(Sender()._image_ref(loaded)).image  # what the private server decodes
    assert received.info.get(decode.INTAKE_KEY) == str(decode.INTAKE_SIDE)
    local, remote = pixels(hybrid_processor, loaded.image), pixels(hybrid_processor, received)
    assert all(np.array_equal(local[k].numpy(), remote[k].numpy()) for k in local)
