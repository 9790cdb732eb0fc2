"""Rebuild the sample model zoo: train small Fashion-MNIST classifiers and export them to ONNX.

Build-time only. Needs Debian's ``dataset-fashion-mnist`` and ``torch==2.13.0`` (CPU);
neither is a runtime or test dependency of fimaudit. Usage::

    python sample_models/build.py            # every model
    python sample_models/build.py --only vgg_small mlp_small

Everything is seeded; on the same machine and torch build the rebuild is bit-identical.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
SEED = 20261121

# Normalisation used by most models: model input = (x * scale - mean) / std.
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530
NORM = {"scale": 1.0 / 255.0, "mean": FMNIST_MEAN, "std": FMNIST_STD}
UNIT = {"scale": 1.0 / 255.0, "mean": 0.0, "std": 1.0}


# --------------------------------------------------------------------------- data
def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fmnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    xtr = _read_idx(DATA_DIR / "train-images-idx3-ubyte.gz")
    ytr = _read_idx(DATA_DIR / "train-labels-idx1-ubyte.gz")
    xte = _read_idx(DATA_DIR / "t10k-images-idx3-ubyte.gz")
    yte = _read_idx(DATA_DIR / "t10k-labels-idx1-ubyte.gz")
    return xtr, ytr.astype(np.int64), xte, yte.astype(np.int64)


def balanced_subset(y: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    idx = []
    for c in range(10):
        members = np.flatnonzero(y == c)
        idx.append(rng.choice(members, size=per_class, replace=False))
    out = np.concatenate(idx)
    return np.sort(out)


def upsample_uint8(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of (N, 28, 28) uint8 images to (N, 1, size, size) uint8."""
    t = torch.from_numpy(x.astype(np.float32)).unsqueeze(1)
    up = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return up.round().clamp(0, 255).to(torch.uint8).numpy()


# ------------------------------------------------------------------------- models
class Normalize(nn.Module):
    """Maps pixels in [0, 1] to the model input (x - mean) / std; kept outside the export."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MLP(nn.Module):
    def __init__(self, d_in: int, widths: list[int], act: str = "relu", softmax: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = d_in
        for w in widths:
            layers += [nn.Linear(prev, w), nn.ReLU() if act == "relu" else nn.Tanh()]
            prev = w
        layers.append(nn.Linear(prev, 10))
        if softmax:
            layers.append(nn.Softmax(dim=1))
        self.net = nn.Sequential(*layers)
        self.ends_in_softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class VGG(nn.Module):
    def __init__(self, cfg: list, stem_stride: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        first = True
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += conv_bn(cin, item, stride=stem_stride if first else 1)
                cin = item
                first = False
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cin, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.b1(self.c1(x)))
        out = self.b2(self.c2(out))
        return F.relu(out + self.short(x))


class ResNet(nn.Module):
    def __init__(self, widths: list[int], blocks_per_stage: int = 1, stem_stride: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, widths[0], stride=stem_stride))
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(BasicBlock(cin, w, stride))
                cin = w
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], dim=1)


class DenseNet(nn.Module):
    def __init__(self, growth: int = 12, layers: tuple[int, ...] = (3, 3), stem: int = 16, stem_stride: int = 1) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(1, stem, 3, stem_stride, 1, bias=False)]
        c = stem
        for i, n in enumerate(layers):
            for _ in range(n):
                mods.append(DenseLayer(c, growth))
                c += growth
            if i < len(layers) - 1:
                out = c // 2
                mods += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, out, 1, bias=False), nn.AvgPool2d(2)]
                c = out
        mods += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*mods)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        q = self.q(x).reshape(b, n, h, d // h).transpose(1, 2)
        k = self.k(x).reshape(b, n, h, d // h).transpose(1, 2)
        v = self.v(x).reshape(b, n, h, d // h).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // h), dim=-1)
        out = (att @ v).transpose(1, 2).reshape(b, n, d)
        return self.o(out)


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.att = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.att(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    def __init__(self, image: int, patch: int, dim: int, depth: int, heads: int, mlp: int, cls_token: bool) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, dim, patch, patch)
        n = (image // patch) ** 2
        self.use_cls = cls_token
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        self.pos = nn.Parameter(torch.randn(1, n + int(cls_token), dim) * 0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        if self.cls is not None:
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        t = self.blocks(t + self.pos)
        t = self.ln(t)
        pooled = t[:, 0] if self.use_cls else t.mean(dim=1)
        return self.head(pooled)


# -------------------------------------------------------------------------- specs
@dataclass
class Spec:
    name: str
    family: str
    build: object  # zero-argument callable returning nn.Module
    size: int = 28
    preprocess: dict = field(default_factory=lambda: dict(NORM))
    epochs: int = 3
    train_n: int = 30000
    lr: float = 2e-3
    augmentation: str = "none"  # none | gaussian
    noise_sigma: float = 0.0  # in [0,1] pixel units
    adv_eps: float = 0.0  # RS-FGSM eps in [0,1] pixel units
    note: str = ""


SPECS: list[Spec] = [
    Spec("mlp_small", "mlp", lambda: MLP(784, [256, 128]), preprocess=dict(UNIT), epochs=4),
    Spec("mlp_tanh_noise", "mlp", lambda: MLP(784, [256, 256], act="tanh"), preprocess=dict(UNIT), epochs=4,
         augmentation="gaussian", noise_sigma=0.2),
    Spec("mlp_softmax", "mlp", lambda: MLP(784, [128], softmax=True), preprocess=dict(UNIT), epochs=4,
         note="ends in Softmax: outputs probabilities"),
    Spec("vgg_small", "vgg", lambda: VGG([16, 16, "M", 32, 32, "M"]), epochs=3),
    Spec("vgg_small_adv", "vgg", lambda: VGG([16, 16, "M", 32, 32, "M"]), epochs=3, adv_eps=0.1),
    Spec("vgg_deep", "vgg", lambda: VGG([16, 16, "M", 32, 32, "M", 64, 64, "M"]), epochs=3),
    Spec("resnet_small", "resnet", lambda: ResNet([16, 32]), epochs=3),
    Spec("resnet_small_noise", "resnet", lambda: ResNet([16, 32]), epochs=3, augmentation="gaussian",
         noise_sigma=0.3),
    Spec("densenet_small", "densenet", lambda: DenseNet(growth=8, layers=(3, 3), stem=16, stem_stride=2), epochs=4),
    Spec("vit_tiny", "transformer", lambda: ViT(28, 7, 48, 2, 4, 96, cls_token=True), epochs=5, lr=1e-3),
    Spec("vit_tiny_meanpool_adv", "transformer", lambda: ViT(28, 7, 48, 2, 4, 96, cls_token=False), epochs=5,
         lr=1e-3, adv_eps=0.05),
    # 96x96 inputs: d = 9216, far above the default query budget.
    Spec("vgg96", "vgg", lambda: VGG([16, "M", 32, "M", 32, "M"], stem_stride=2), size=96, epochs=4, train_n=20000),
    Spec("resnet96_noise", "resnet", lambda: ResNet([16, 32], stem_stride=4), size=96, epochs=4, train_n=20000,
         lr=3e-3, augmentation="gaussian", noise_sigma=0.2),
    Spec("densenet96", "densenet", lambda: DenseNet(growth=8, layers=(2, 2), stem=16, stem_stride=4), size=96,
         epochs=4, train_n=20000, lr=3e-3),
]


# ----------------------------------------------------------------------- training
def to_model_input(xb: torch.Tensor, spec: Spec) -> torch.Tensor:
    """xb: float pixels in [0, 1]."""
    pp = spec.preprocess
    return (xb - pp["mean"]) / pp["std"]


def train(spec: Spec, xtr: np.ndarray, ytr: np.ndarray) -> nn.Module:
    g = torch.Generator().manual_seed(SEED + sum(map(ord, spec.name)))
    torch.manual_seed(SEED + sum(map(ord, spec.name)))
    model = spec.build()
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    n = min(spec.train_n, len(xtr))
    x_all = torch.from_numpy(xtr[:n].astype(np.float32) / 255.0).unsqueeze(1)
    y_all = torch.from_numpy(ytr[:n])
    bs = 128
    steps = spec.epochs * math.ceil(n / bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=steps)
    for epoch in range(spec.epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            xb, yb = x_all[idx], y_all[idx]
            if spec.size != 28:
                xb = F.interpolate(xb, size=(spec.size, spec.size), mode="bilinear", align_corners=False)
            if spec.augmentation == "gaussian":
                xb = (xb + spec.noise_sigma * torch.randn(xb.shape, generator=g)).clamp(0, 1)
            if spec.adv_eps > 0:
                # RS-FGSM (random start, step 1.25 eps) in pixel space.
                eps = spec.adv_eps
                delta = (torch.rand(xb.shape, generator=g) * 2 - 1) * eps
                delta.requires_grad_(True)
                loss = F.cross_entropy(_logits(model, to_model_input((xb + delta).clamp(0, 1), spec)), yb)
                (grad,) = torch.autograd.grad(loss, delta)
                delta = (delta + 1.25 * eps * grad.sign()).clamp(-eps, eps).detach()
                xb = (xb + delta).clamp(0, 1)
            loss = F.cross_entropy(_logits(model, to_model_input(xb, spec)), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if getattr(model, "ends_in_softmax", False):
        return torch.log(out.clamp_min(1e-30))
    return out


# ------------------------------------------------------------------------- export
def export(model: nn.Module, spec: Spec, path: Path, probe: np.ndarray) -> None:
    dummy = torch.zeros(2, 1, spec.size, spec.size)
    out_name = "probabilities" if getattr(model, "ends_in_softmax", False) else "logits"
    torch.onnx.export(
        model, (dummy,), str(path), dynamo=False, opset_version=17, input_names=["input"],
        output_names=[out_name], dynamic_axes={"input": {0: "batch"}, out_name: {0: "batch"}},
        do_constant_folding=True,
    )
    m = onnx.load(str(path))
    m.ir_version = min(m.ir_version, 8)
    m.producer_name = "fimaudit-zoo"
    m.doc_string = f"fimaudit sample model {spec.name} ({spec.family}); Fashion-MNIST {spec.size}x{spec.size}"
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    # onnxruntime must agree with torch.
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(torch.from_numpy(probe)).numpy()
    got = sess.run(None, {"input": probe})[0]
    diff = float(np.max(np.abs(ref - got)))
    if diff > 1e-4:
        raise SystemExit(f"{spec.name}: onnxruntime and torch differ by {diff:.2e}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def accuracy_onnx(path: Path, x: np.ndarray, y: np.ndarray, pp: dict) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    u = ((x.astype(np.float32) * np.float32(pp["scale"])) - np.float32(pp["mean"])) / np.float32(pp["std"])
    out = sess.run(None, {"input": u.astype(np.float32)})[0]
    return float(np.mean(out.argmax(1) == y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="names of models to rebuild (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(SEED)
    xtr, ytr, xte, yte = load_fmnist()
    perm = rng.permutation(len(xtr))
    xtr, ytr = xtr[perm], ytr[perm]

    sub28 = balanced_subset(yte, 100, rng)
    x28, y28 = xte[sub28][:, None, :, :].copy(), yte[sub28].copy()
    sub96 = balanced_subset(yte, 20, np.random.default_rng(SEED + 96))
    x96, y96 = upsample_uint8(xte[sub96], 96), yte[sub96].copy()
    datasets = {28: ("fmnist_test_1000_28.npz", x28, y28), 96: ("fmnist_test_200_96.npz", x96, y96)}
    for fname, x, y in datasets.values():
        np.savez_compressed(HERE / fname, x=x, y=y)

    manifest_path = HERE / "manifest.json"
    entries: dict[str, dict] = {}
    if manifest_path.exists() and args.only:
        for e in json.loads(manifest_path.read_text())["models"]:
            entries[e["name"]] = e
    for spec in SPECS:
        if args.only and spec.name not in args.only:
            continue
        t0 = time.time()
        model = train(spec, xtr, ytr)
        fname, x, y = datasets[spec.size]
        path = HERE / f"{spec.name}.onnx"
        probe = to_model_input(torch.from_numpy(x[:8].astype(np.float32) / 255.0), spec).numpy()
        export(model, spec, path, probe)
        acc = accuracy_onnx(path, x, y, spec.preprocess)
        entries[spec.name] = {
            "name": spec.name,
            "file": path.name,
            "family": spec.family,
            "input_shape": [1, spec.size, spec.size],
            "data": fname,
            "preprocess": spec.preprocess,
            "output_kind": "probabilities" if getattr(model, "ends_in_softmax", False) else "logits",
            "training": {
                "epochs": spec.epochs,
                "train_images": min(spec.train_n, len(xtr)),
                "augmentation": spec.augmentation,
                "noise_sigma": spec.noise_sigma,
                "adversarial_eps": spec.adv_eps,
                "adversarial_method": "rs-fgsm" if spec.adv_eps > 0 else None,
                "optimizer": f"adam, one-cycle lr {spec.lr}",
            },
            "note": spec.note,
            "accuracy": round(acc, 4),
            "sha256": sha256(path),
        }
        print(f"{spec.name:24s} acc={acc:.4f}  {time.time() - t0:6.1f}s  {path.stat().st_size / 1e6:.2f} MB", flush=True)
    ordered = [entries[s.name] for s in SPECS if s.name in entries]
    manifest_path.write_text(json.dumps({"models": ordered}, indent=2) + "\n")


if __name__ == "__main__":
    main()
