"""Train and export the onnxq demo models (CPU only, fully seeded, reproducible).

Default run: makes synthetic X-ray-like training and held-out sets with
``scripts/synthetic_xray.py``, trains a small CNN, checks its held-out accuracy (exits non-zero
below 95 %), exports ONNX (opset 17, dynamic batch axis) to
``onnx/chest-xray-classifier-demo/1/model.onnx``, verifies it with onnxruntime against torch at
batch 1 and 8, writes ``model.toml`` next to it and writes sample images into ``samples/``.
The data are synthetic: the model is a demo, NOT for clinical use.

``--bench-resnet18``: instead builds a ResNet-18-architecture ImageNet-shaped model
(3x224x224 RGB in, 1000 logits out) with RANDOM weights, for throughput benchmarks only, and
exports it to ``onnx/resnet18-bench/1/`` (not committed to git).

Requirements (beyond the project's own numpy/Pillow/onnxruntime)::

    pip install torch==2.13.0 onnx onnxscript

``onnxscript`` (and ``onnx``) are needed by torch's default dynamo-based ONNX exporter.

Usage::

    python scripts/train_demo_model.py                  # demo model, ~2-4 min on 2 cores
    python scripts/train_demo_model.py --bench-resnet18 # random-weight ResNet-18
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_xray import LABELS, make_dataset, write_samples

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO_ROOT / "onnx" / "chest-xray-classifier-demo" / "1"
BENCH_DIR = REPO_ROOT / "onnx" / "resnet18-bench" / "1"
SAMPLES_DIR = REPO_ROOT / "samples"

GEN_SIZE = 256  # generated image size, as the sample files
INPUT_SIZE = 128  # model input size; images are resized with PIL BILINEAR like the server does
MEAN = 0.5
STD = 0.25
TRAIN_SEED = 1234  # data seeds; write_samples uses synthetic_xray.SAMPLES_SEED, distinct from these
HELDOUT_SEED = 5678
TORCH_SEED = 42
MIN_ACCURACY = 0.95
OPSET = 17


def set_seeds(seed: int) -> None:
    """Seed Python, numpy and torch so that reruns give the same data and weights."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class DemoCNN(nn.Module):
    """Small CNN: 1x128x128 normalised greyscale in, 3 raw logits out (~0.1 M parameters)."""

    def __init__(self, n_classes: int = len(LABELS)) -> None:
        super().__init__()
        # Stem: 5x5 stride-2 conv + pool (128 -> 32), then three conv/pool stages (32 -> 4).
        layers: list[nn.Module] = [
            nn.Conv2d(1, 16, kernel_size=5, stride=2, padding=2, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        chans = [16, 32, 64, 64]
        for c_in, c_out in itertools.pairwise(chans):
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(64 * 4 * 4, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return raw logits of shape [N, n_classes]."""
        out: torch.Tensor = self.head(self.features(x))
        return out


def normalise(images: npt.NDArray[np.uint8]) -> torch.Tensor:
    """Turn uint8 images (N, H, W) into the model input: float32 NCHW, (pixel/255 - mean)/std."""
    x = (images.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x[:, None, :, :])


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Return the accuracy of ``model`` (put in eval mode) on inputs ``x`` and labels ``y``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 256):
            correct += int((model(x[i : i + 256]).argmax(1) == y[i : i + 256]).sum())
    return correct / len(x)


def train_demo(epochs: int, n_train: int, n_heldout: int) -> tuple[DemoCNN, float]:
    """Make the data, train :class:`DemoCNN` and return it with its held-out accuracy."""
    set_seeds(TORCH_SEED)
    t0 = time.perf_counter()
    train_imgs, train_labels = make_dataset(n_train, TRAIN_SEED, GEN_SIZE, out_size=INPUT_SIZE)
    held_imgs, held_labels = make_dataset(n_heldout, HELDOUT_SEED, GEN_SIZE, out_size=INPUT_SIZE)
    print(
        f"data: {len(train_labels)} train / {len(held_labels)} held-out images in {time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    x_train, y_train = normalise(train_imgs), torch.from_numpy(train_labels)
    x_held, y_held = normalise(held_imgs), torch.from_numpy(held_labels)

    model = DemoCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    batch = 32
    steps = epochs * ((len(x_train) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(TORCH_SEED)
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(perm), batch):
            idx = perm[i : i + batch]
            xb, yb = x_train[idx], y_train[idx]
            if bool(torch.rand((), generator=gen) < 0.5):
                xb = torch.flip(xb, dims=[3])  # left/right mirror: every class is symmetric in kind
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        acc = evaluate(model, x_held, y_held)
        print(
            f"epoch {epoch}/{epochs}: loss {total / seen:.4f}  held-out acc {acc:.4f}  "
            f"({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
    accuracy = evaluate(model, x_held, y_held)
    print(f"final held-out accuracy: {accuracy:.4f} ({len(y_held)} images)", flush=True)
    return model, accuracy


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export ``model`` to a single-file ONNX at ``path``: opset 17, dynamic batch axis.

    Input is named ``input``, output ``logits``. External data, if the exporter wrote any, is
    folded back into the one ``.onnx`` file.
    """
    import onnx  # imported here: the repo's onnx/ folder would confuse import sorting

    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        opset_version=OPSET,
        dynamic_shapes={"x": {0: batch}},
        dynamo=True,
        external_data=False,
    )
    data_file = path.with_name(path.name + ".data")
    proto = onnx.load(str(path))  # loads external data too, if any
    onnx.save(proto, str(path), save_as_external_data=False)
    if data_file.exists():
        data_file.unlink()
    onnx.checker.check_model(str(path))
    opsets = {o.domain: o.version for o in proto.opset_import}
    if opsets.get("", opsets.get("ai.onnx")) != OPSET:
        raise SystemExit(f"{path}: exported with opset {opsets}, expected {OPSET}")


def verify_onnx(model: nn.Module, path: Path, make_input: Callable[[int], torch.Tensor]) -> None:
    """Check with onnxruntime that batch 1 and batch 8 outputs match torch within 1e-4."""
    model.eval()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = sess.get_inputs()[0].shape
    print(f"onnx input {sess.get_inputs()[0].name} {shape}, output {sess.get_outputs()[0].name}")
    for n in (1, 8):
        x = make_input(n)
        with torch.no_grad():
            expected = model(x).numpy()
        got = sess.run(["logits"], {"input": x.numpy()})[0]
        diff = float(np.max(np.abs(got - expected)))
        print(f"onnxruntime batch {n}: output {tuple(got.shape)}, max |ort - torch| = {diff:.2e}")
        if got.shape != expected.shape or diff > 1e-4:
            raise SystemExit(f"onnxruntime output differs from torch at batch {n} (max diff {diff})")


def write_demo_toml(path: Path, accuracy: float) -> None:
    """Write the demo model's ``model.toml`` (labels, input contract, batching, accuracy)."""
    labels = ", ".join(f'"{label}"' for label in LABELS)
    path.write_text(
        "# chest-xray-classifier-demo v1: synthetic demo model, NOT for clinical use.\n"
        'description = "Small CNN trained on synthetic X-ray-like images; not for clinical use."\n'
        'domain = "medical"\n'
        f"labels = [{labels}]\n"
        f"accuracy = {round(accuracy, 4)}          # held-out accuracy measured by "
        "scripts/train_demo_model.py\n"
        "\n"
        "[input]\n"
        f"width = {INPUT_SIZE}\n"
        f"height = {INPUT_SIZE}\n"
        'color_mode = "L"          # PIL mode the image is converted to: "L" or "RGB"\n'
        f"mean = [{MEAN}]\n"
        f"std = [{STD}]\n"
        "\n"
        "[output]\n"
        'kind = "logits"           # "logits" (softmax applied by the server) or "probabilities"\n'
        "\n"
        "[batching]\n"
        "max_batch_size = 16\n"
        "max_wait_ms = 5\n",
        encoding="utf-8",
    )


# --- ResNet-18 benchmark model (plain torch, no torchvision) ---------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with batch norm and an identity/projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: torch.Tensor = self.relu(out + self.shortcut(x))
        return result


class ResNet18(nn.Module):
    """ResNet-18 architecture (He et al. 2015): 3x224x224 in, ``n_classes`` logits out."""

    def __init__(self, n_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        blocks: list[nn.Module] = []
        c_in = 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*blocks)
        # Fixed 7x7 average pool (224 input -> 7x7 maps) instead of AdaptiveAvgPool2d: it exports
        # as AveragePool, which the exporter's opset-18 -> 17 down-conversion handles (ReduceMean
        # with an axes input it does not).
        self.pool = nn.AvgPool2d(7)
        self.fc = nn.Linear(512, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return raw logits of shape [N, n_classes]."""
        out: torch.Tensor = self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))
        return out


def write_bench_toml(path: Path) -> None:
    """Write ``model.toml`` of the random-weight ResNet-18 benchmark model (no accuracy)."""
    names = [f'"class-{i:03d}"' for i in range(1000)]
    lines = ",\n".join("    " + ", ".join(names[i : i + 10]) for i in range(0, 1000, 10))
    path.write_text(
        "# resnet18-bench v1: ResNet-18 architecture with RANDOM weights, for benchmarks only.\n"
        'description = "ResNet-18 architecture with random (untrained) weights, for throughput '
        'benchmarks only; its outputs are meaningless."\n'
        'domain = "benchmark"\n'
        f"labels = [\n{lines},\n]\n"
        "\n"
        "[input]\n"
        "width = 224\n"
        "height = 224\n"
        'color_mode = "RGB"        # PIL mode the image is converted to: "L" or "RGB"\n'
        "mean = [0.485, 0.456, 0.406]\n"
        "std = [0.229, 0.224, 0.225]\n"
        "\n"
        "[output]\n"
        'kind = "logits"           # "logits" (softmax applied by the server) or "probabilities"\n'
        "\n"
        "[batching]\n"
        "max_batch_size = 32\n"
        "max_wait_ms = 10\n",
        encoding="utf-8",
    )


def build_bench_resnet18() -> None:
    """Export a ResNet-18 with RANDOM weights (seeded; no download) to onnx/resnet18-bench/1/."""
    set_seeds(TORCH_SEED)
    # RANDOM weights on purpose: this model exists only to measure throughput/latency of a
    # realistically sized network. Nothing is downloaded; its predictions mean nothing.
    model = ResNet18().eval()
    path = BENCH_DIR / "model.onnx"
    export_onnx(model, torch.randn(2, 3, 224, 224), path)
    gen = torch.Generator().manual_seed(0)
    verify_onnx(model, path, lambda n: torch.randn(n, 3, 224, 224, generator=gen))
    write_bench_toml(BENCH_DIR / "model.toml")
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) and model.toml")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--bench-resnet18",
        action="store_true",
        help="build the random-weight ResNet-18 benchmark model instead of the demo model",
    )
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    parser.add_argument("--n-train", type=int, default=800, help="training images per class")
    parser.add_argument("--n-heldout", type=int, default=200, help="held-out images per class")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.bench_resnet18:
        build_bench_resnet18()
        return 0

    t0 = time.perf_counter()
    model, accuracy = train_demo(args.epochs, args.n_train, args.n_heldout)
    print(f"training wall time: {time.perf_counter() - t0:.0f}s")
    if accuracy < MIN_ACCURACY:
        print(f"held-out accuracy {accuracy:.4f} < {MIN_ACCURACY}: not exporting", file=sys.stderr)
        return 1

    path = DEMO_DIR / "model.onnx"
    export_onnx(model, torch.zeros(2, 1, INPUT_SIZE, INPUT_SIZE), path)
    probe_imgs, _ = make_dataset(3, HELDOUT_SEED + 1, GEN_SIZE, out_size=INPUT_SIZE)  # 9 real images
    probe = normalise(probe_imgs)
    verify_onnx(model, path, lambda n: probe[:n])
    write_demo_toml(DEMO_DIR / "model.toml", accuracy)
    samples = write_samples(SAMPLES_DIR)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB), model.toml")
    print("wrote samples: " + ", ".join(p.name for p in samples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
