"""Image loading (mode conversion) and the pad / crop / resize modes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor

from mllm.data import (
    ImageLoadError,
    expand_to_square,
    load_image,
    pad_colour,
    prepare_image,
    target_size,
)


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)  # [H, W, 3] uint8


def saved(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


# --- load_image --------------------------------------------------------------------------


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (0, 0, 0, 0))  # transparent black: must not show as black
    image.putpixel((1, 0), (255, 0, 0, 255))
    image.putpixel((2, 0), (255, 0, 0, 128))  # half-transparent red over white
    loaded = pixels(load_image(saved(image, tmp_path / "a.png")))
    assert loaded[0, 0].tolist() == [255, 255, 255]
    assert loaded[0, 1].tolist() == [255, 0, 0]
    assert loaded[0, 2, 0] == 255 and 125 <= loaded[0, 2, 1] <= 129


def test_rgba_background_can_be_chosen(tmp_path: Path) -> None:
    image = Image.new("RGBA", (1, 1), (0, 0, 0, 0))
    loaded = load_image(saved(image, tmp_path / "a.png"), background=(122, 116, 104))
    assert pixels(loaded)[0, 0].tolist() == [122, 116, 104]


def test_grayscale_with_alpha(tmp_path: Path) -> None:
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (0, 0))
    image.putpixel((1, 0), (40, 255))
    loaded = pixels(load_image(saved(image, tmp_path / "a.png")))
    assert loaded[0].tolist() == [[255, 255, 255], [40, 40, 40]]


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    opaque = pixels(load_image(saved(image, tmp_path / "opaque.png")))
    assert opaque[0].tolist() == [[0, 0, 255], [0, 255, 0]]
    clear = pixels(load_image(saved(image, tmp_path / "clear.png", transparency=0)))
    assert clear[0].tolist() == [[255, 255, 255], [0, 255, 0]]


def test_cmyk(tmp_path: Path) -> None:
    image = Image.new("CMYK", (2, 1))
    image.putpixel((0, 0), (0, 0, 0, 0))  # no ink: white
    image.putpixel((1, 0), (0, 255, 255, 0))  # magenta + yellow: red
    loaded = pixels(load_image(saved(image, tmp_path / "a.tif")))
    assert loaded[0].tolist() == [[255, 255, 255], [255, 0, 0]]


def test_grayscale_and_bilevel(tmp_path: Path) -> None:
    gray = Image.fromarray(np.array([[0, 90, 255]], dtype=np.uint8), mode="L")
    assert pixels(load_image(saved(gray, tmp_path / "l.png")))[0, 1].tolist() == [90, 90, 90]
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    loaded = pixels(load_image(saved(bilevel, tmp_path / "b.png")))
    assert loaded[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    path = saved(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")  # Pillow reads it as 16-bit
    loaded = pixels(load_image(path))
    # Pillow's convert("RGB") would give [0, 255, 255]: everything above 255 clipped.
    assert loaded[0, :, 0].tolist() == [0, 100, 255]


def test_float_image_is_read_as_unit_range() -> None:
    from mllm.data import to_rgb

    image = Image.fromarray(np.array([[0.0, 0.5, 2.0]], dtype=np.float32), mode="F")
    assert pixels(to_rgb(image))[0, :, 0].tolist() == [0, 128, 255]


def test_unreadable_images_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match="garbage.jpg"):
        load_image(garbage)


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_a_cut_short_file_fails_even_where_pillow_was_told_to_accept_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    # Some libraries turn Pillow's process-wide tolerance on when imported (lmms-eval does);
    # a truncated training image must still fail, and the switch is left as it was.
    from PIL import ImageFile

    whole = tmp_path / f"whole.{suffix}"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(whole)
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageLoadError, match=f"cut.{suffix}"):
        load_image(cut)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    assert load_image(whole).size == (64, 64)


# --- expand_to_square and the modes ------------------------------------------------------


def test_pad_colour_is_the_processor_mean(clip_processor: BaseImageProcessor) -> None:
    # LLaVA: tuple(int(x * 255) for x in processor.image_mean); CLIP's mean gives this.
    assert pad_colour(clip_processor) == (122, 116, 104)


@pytest.mark.parametrize(("size", "offset"), [((40, 20), (0, 10)), ((20, 41), (10, 0))])
def test_expand_to_square_centres_like_llava(size, offset) -> None:
    image = Image.new("RGB", size, (255, 0, 0))
    square = expand_to_square(image, (1, 2, 3))
    side = max(size)
    assert square.size == (side, side)
    grid = pixels(square)
    left, top = offset
    assert grid[top, left].tolist() == [255, 0, 0]
    assert grid[top + size[1] - 1, left + size[0] - 1].tolist() == [255, 0, 0]
    assert grid[0, 0].tolist() == [1, 2, 3]  # both corners are padding
    assert grid[side - 1, side - 1].tolist() == [1, 2, 3]
    assert grid[top - 1 if top else 0, left - 1 if left else 0].tolist() == [1, 2, 3]


def test_square_images_are_unchanged() -> None:
    image = Image.new("RGB", (5, 5), (9, 9, 9))
    assert expand_to_square(image, (0, 0, 0)) is image


def test_pad_mode_pads_with_the_mean(clip_processor: BaseImageProcessor) -> None:
    wide = Image.new("RGB", (128, 32), (255, 0, 0))
    pixel_values = prepare_image(wide, clip_processor, "pad")  # [3, 64, 64]
    assert pixel_values.shape == (3, 64, 64)
    # Padding is the mean colour, which normalises to ~0; the image band is red.
    assert pixel_values[:, :8].abs().max() < 0.02
    assert pixel_values[:, -8:].abs().max() < 0.02
    assert pixel_values[0, 32, 32] > 1.5 and pixel_values[1, 32, 32] < -1.5


@pytest.mark.parametrize("mode", ["pad", "crop", "resize"])
def test_every_mode_gives_the_processor_size(
    clip_processor: BaseImageProcessor, siglip_processor: BaseImageProcessor, mode: str
) -> None:
    image = Image.new("RGB", (90, 50), (10, 200, 30))
    clip = prepare_image(image, clip_processor, mode)
    siglip = prepare_image(image, siglip_processor, mode)
    assert clip.shape == (3, 64, 64) and clip.dtype == torch.float32
    assert siglip.shape == (3, 32, 32)
    assert target_size(clip_processor) == (64, 64) and target_size(siglip_processor) == (32, 32)


def test_crop_loses_the_sides_and_resize_keeps_them(clip_processor: BaseImageProcessor) -> None:
    grid = np.zeros((64, 256, 3), dtype=np.uint8)
    grid[:, :32] = (0, 255, 0)  # a green band on the far left
    image = Image.fromarray(grid)
    cropped = prepare_image(image, clip_processor, "crop")
    resized = prepare_image(image, clip_processor, "resize")
    padded = prepare_image(image, clip_processor, "pad")
    assert cropped[1, 32, 0] < 0  # centre crop: the green band is gone
    assert resized[1, 32, 0] > 1.5  # stretched: the band is on the left edge
    assert padded[1, 32, 0] > 1.5  # padded: nothing is cropped either


def test_unknown_mode_lists_the_choices(clip_processor: BaseImageProcessor) -> None:
    with pytest.raises(ValueError, match="pad, crop, resize"):
        prepare_image(Image.new("RGB", (4, 4)), clip_processor, "squash")
