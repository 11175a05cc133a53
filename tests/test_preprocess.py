"""Producer validation and worker preprocessing over the bad-input corpus (no queue, no SQL)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxq.errors import OnnxqError
from onnxq.images import inspect_image
from tests.corpus import corpus, exif_rotated_jpeg
from workers.modelconfig import InputSpec
from workers.preprocess import decode, preprocess

LIMITS = {"max_bytes": 10 * 1024 * 1024, "max_pixels": 40_000_000, "min_side_px": 8}
GREY = InputSpec(width=128, height=128, color_mode="L", mean=[0.5], std=[0.25])
RGB = InputSpec(width=64, height=64, color_mode="RGB", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


@pytest.mark.parametrize("name", sorted(corpus()))
@pytest.mark.parametrize("spec", [GREY, RGB], ids=["L", "RGB"])
def test_every_corpus_input_works_or_fails_with_its_code(name: str, spec: InputSpec) -> None:
    data, expected_code = corpus()[name]
    if expected_code is None:
        tensor = preprocess(data, spec, **LIMITS)
        assert tensor.shape == (spec.channels, spec.height, spec.width)
        assert tensor.dtype == np.float32
        assert np.isfinite(tensor).all()
        return
    with pytest.raises(OnnxqError) as caught:
        inspect_image(data, **LIMITS)
        preprocess(data, spec, **LIMITS)  # only reached when the header looked fine
    assert caught.value.code == expected_code
    assert caught.value.message  # a sentence a user can act on


def test_producer_refuses_before_decoding_pixels() -> None:
    data, _ = corpus()["bomb.png"]
    with pytest.raises(OnnxqError) as caught:
        inspect_image(data, **LIMITS)
    assert caught.value.code == "image_too_many_pixels"
    assert len(data) < 200_000  # a small file that declares 900 megapixels


def test_truncated_jpeg_passes_the_header_check_and_fails_in_the_worker() -> None:
    data, _ = corpus()["truncated.jpg"]
    assert inspect_image(data, **LIMITS).format == "JPEG"
    with pytest.raises(OnnxqError) as caught:
        preprocess(data, GREY, **LIMITS)
    assert caught.value.code == "image_decode_failed"


def test_exif_orientation_is_applied() -> None:
    data, upright = exif_rotated_jpeg()
    spec = InputSpec(width=160, height=320, color_mode="L", mean=[0.0], std=[1.0])
    image = np.asarray(decode(data, spec, **LIMITS), dtype=np.float32)
    # The bright band is at the top once the EXIF rotation is applied.
    assert image[:60].mean() > 200
    assert image[100:].mean() < 50
    assert np.abs(image - np.asarray(upright, dtype=np.float32)).mean() < 10


def test_sixteen_bit_images_keep_their_contrast() -> None:
    data, _ = corpus()["sixteen.png"]
    tensor = preprocess(data, InputSpec(width=64, height=64, color_mode="L", mean=[0.0], std=[1.0]), **LIMITS)
    # Pillow's own I;16 → L conversion would clip almost everything to white.
    assert 0.05 < float(tensor.mean()) < 0.95
    assert float(tensor.std()) > 0.05
