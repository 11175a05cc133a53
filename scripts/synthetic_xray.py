"""Synthetic "chest X-ray" images for the onnxq demo model, tests and benchmarks.

Nothing here is medical data. The images are drawn procedurally: a dark background, a bright
thorax silhouette with ribs, spine and heart shadow, two dark lung fields, noise, and a
class-specific pattern inside the lungs:

* ``Normal``    - clear, dark lungs; nothing added.
* ``Pneumonia`` - one dense, bright consolidation blob in the lower half of ONE lung.
* ``COVID-19``  - bilateral, peripheral, patchy "ground-glass" haze: several faint spots along
  the outer edge of BOTH lungs.

Sizes, positions, brightness and contrast vary randomly, so classifying them is a (small)
learning task, yet the patterns stay clearly visible.

The module needs only numpy and Pillow (no torch): tests and benchmarks import it to make
input images, and ``scripts/train_demo_model.py`` imports it to make its training data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

#: The three classes, in the order of the model's output logits.
LABELS: tuple[str, str, str] = ("COVID-19", "Pneumonia", "Normal")

#: Default seed of :func:`write_samples`; distinct from the seeds the training script uses.
SAMPLES_SEED = 9_001

FloatImage = npt.NDArray[np.float64]


def _soft_ellipse(
    xx: FloatImage, yy: FloatImage, cx: float, cy: float, rx: float, ry: float, edge: float = 0.15
) -> FloatImage:
    """Return a 0..1 mask of an ellipse whose border fades out over ``edge`` (relative radius)."""
    r = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return np.clip((1.0 - r) / edge + 0.5, 0.0, 1.0)


def _gauss(xx: FloatImage, yy: FloatImage, cx: float, cy: float, sx: float, sy: float) -> FloatImage:
    """Return an axis-aligned 2-D Gaussian bump with peak 1."""
    return np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))


def _box_blur(img: FloatImage, k: int) -> FloatImage:
    """Return ``img`` blurred by a separable ``k``-pixel box filter (edge-padded)."""
    if k <= 1:
        return img
    pad = k // 2
    padded = np.pad(img, ((pad, k - 1 - pad), (pad, k - 1 - pad)), mode="edge")
    c = np.cumsum(np.pad(padded, ((1, 0), (0, 0))), axis=0)
    rows = (c[k:] - c[:-k]) / k
    c = np.cumsum(np.pad(rows, ((0, 0), (1, 0))), axis=1)
    out: FloatImage = (c[:, k:] - c[:, :-k]) / k
    return out


def make_image(label: str, rng: np.random.Generator, size: int = 256) -> Image.Image:
    """Draw one synthetic X-ray-like greyscale ("L" mode) image of class ``label``.

    ``rng`` supplies all randomness (anatomy jitter, pattern placement, noise), so the same
    generator state always gives the same image. ``size`` is the width and height in pixels.
    """
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; expected one of {LABELS}")
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    xx, yy = np.meshgrid(coords, coords)

    # Patient position jitter and anatomy size jitter (normalised image coordinates).
    dx, dy = rng.uniform(-0.035, 0.035, size=2)
    scale = rng.uniform(0.92, 1.06)

    img = np.full((size, size), 0.06)
    # Thorax / soft tissue.
    thorax = _soft_ellipse(xx, yy, 0.5 + dx, 0.56 + dy, 0.43 * scale, 0.50 * scale, edge=0.25)
    img += 0.42 * thorax
    # Shoulders / upper body band.
    img += 0.12 * _soft_ellipse(xx, yy, 0.5 + dx, 0.08 + dy, 0.55 * scale, 0.14, edge=0.4)

    # Two lung fields (dark). Image left = patient right.
    lung_rx, lung_ry = 0.135 * scale, 0.28 * scale
    lung_cy = 0.47 + dy
    lungs: list[tuple[float, float]] = []
    lung_mask = np.zeros_like(img)
    for side in (-1.0, 1.0):
        cx = 0.5 + dx + side * rng.uniform(0.155, 0.18) * scale
        lungs.append((cx, lung_cy))
        m = _soft_ellipse(xx, yy, cx, lung_cy, lung_rx, lung_ry, edge=0.3)
        lung_mask = np.maximum(lung_mask, m)
    img -= 0.30 * lung_mask

    # Ribs: curved bright bands, visible mostly over the lungs.
    rib_period = rng.uniform(0.065, 0.08) * scale
    curve = yy - 0.10 * ((xx - 0.5 - dx) / 0.4) ** 2
    ribs = np.clip(np.sin(2 * np.pi * (curve - dy) / rib_period) * 2.0 - 1.2, 0.0, 1.0)
    img += 0.07 * ribs * thorax

    # Spine and heart shadow.
    img += 0.22 * _soft_ellipse(xx, yy, 0.5 + dx, 0.55 + dy, 0.035 * scale, 0.55, edge=0.5)
    heart_cx = 0.54 + dx + rng.uniform(-0.02, 0.02)
    img += 0.26 * _gauss(xx, yy, heart_cx, 0.63 + dy, 0.085 * scale, 0.095 * scale)

    if label == "Pneumonia":
        # One dense consolidation in the lower lobe of one lung.
        cx, cy = lungs[int(rng.integers(0, 2))]
        bx = cx + rng.uniform(-0.05, 0.05) * scale
        by = cy + rng.uniform(0.06, 0.17) * scale
        sx, sy = rng.uniform(0.035, 0.07, size=2) * scale
        blob = np.clip(1.6 * _gauss(xx, yy, bx, by, sx, sy), 0.0, 1.0)
        texture = 0.85 + 0.15 * _box_blur(rng.random((size, size)), max(3, size // 40))
        img += rng.uniform(0.24, 0.46) * blob * texture
    elif label == "COVID-19":
        # Bilateral, peripheral, patchy ground-glass haze.
        haze = np.zeros_like(img)
        for side, (cx, cy) in zip((-1.0, 1.0), lungs, strict=True):
            for _ in range(int(rng.integers(2, 6))):
                sx_ = cx + side * rng.uniform(0.45, 0.85) * lung_rx
                sy_ = cy + rng.uniform(-0.55, 0.75) * lung_ry
                s = rng.uniform(0.022, 0.04) * scale
                haze += rng.uniform(0.7, 1.0) * _gauss(xx, yy, sx_, sy_, s, s * rng.uniform(1.0, 1.6))
        patchy = 0.55 + 0.9 * _box_blur(rng.random((size, size)), max(3, size // 32))
        img += rng.uniform(0.12, 0.22) * np.clip(haze, 0.0, 1.3) * patchy * (0.4 + 0.6 * lung_mask)

    # Any class may show a small benign calcified granuloma (a bright dot): not a class cue.
    if rng.random() < 0.35:
        gx, gy = lungs[int(rng.integers(0, 2))]
        gx += rng.uniform(-0.6, 0.6) * lung_rx
        gy += rng.uniform(-0.7, 0.7) * lung_ry
        g = rng.uniform(0.007, 0.013) * scale
        img += rng.uniform(0.3, 0.5) * np.clip(1.5 * _gauss(xx, yy, gx, gy, g, g), 0.0, 1.0)

    # Acquisition variation: contrast, brightness, noise, slight blur.
    img = (img - 0.3) * rng.uniform(0.8, 1.2) + 0.3 + rng.uniform(-0.06, 0.06)
    img += rng.normal(0.0, rng.uniform(0.02, 0.05), size=img.shape)
    img = _box_blur(img, 3)
    pixels = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="L")


def make_dataset(
    n_per_class: int, seed: int, size: int = 256, out_size: int | None = None
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Make a shuffled data set of ``n_per_class`` images per class, for training and testing.

    Returns ``(images, labels)``: uint8 images of shape ``(N, s, s)`` and int64 label indices
    into :data:`LABELS`. Images are drawn at ``size`` pixels; when ``out_size`` is given they are
    then resized to ``out_size`` with PIL BILINEAR, as an inference server would (``s`` is
    ``out_size`` then, else ``size``). The same ``seed`` always gives the same data.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(LABELS), dtype=np.int64), n_per_class)
    rng.shuffle(labels)
    side = out_size if out_size is not None else size
    images = np.empty((len(labels), side, side), dtype=np.uint8)
    for i, label_idx in enumerate(labels):
        im = make_image(LABELS[int(label_idx)], rng, size)
        if out_size is not None and out_size != size:
            im = im.resize((out_size, out_size), Image.Resampling.BILINEAR)
        images[i] = np.asarray(im, dtype=np.uint8)
    return images, labels


def write_samples(out_dir: Path, n_per_class: int = 2, seed: int = SAMPLES_SEED, size: int = 256) -> list[Path]:
    """Write ``n_per_class`` sample images per class into ``out_dir``; return their paths.

    Files are named ``<label-lowercase>_<n>.<ext>`` (e.g. ``covid-19_1.png``,
    ``pneumonia_1.jpg``); PNG and JPEG alternate so that both decoders get exercised.
    They are small (< 100 KiB each) and meant for demos, smoke tests and benchmarks.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    for class_idx, label in enumerate(LABELS):
        for n in range(1, n_per_class + 1):
            im = make_image(label, rng, size)
            use_png = (class_idx + n) % 2 == 0
            path = out_dir / f"{label.lower()}_{n}.{'png' if use_png else 'jpg'}"
            if use_png:
                im.save(path, format="PNG", optimize=True)
            else:
                im.save(path, format="JPEG", quality=90)
            paths.append(path)
    return paths
