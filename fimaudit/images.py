"""A folder of photos as data: listing, labels, decoding, resizing, layout/channel order and normalisation presets.

Pixels are returned as uint8 values in the model's input layout; the preset's (or the user's)
scale/mean/std turn them into model input, exactly as for a ``.npz`` of uint8 pixels.
"""

from __future__ import annotations

import csv
import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .choices import CHANNEL_ORDERS, DEFAULT_RESIZE, PRESETS, RESIZE_POLICIES, Preset  # noqa: F401 - re-exported
from .data import Dataset, Preprocess, load_data
from .errors import ConfigError, DataError
from .model.layout import Layout, detect_layout

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
LABELS_FILE = "labels.csv"


@dataclass(frozen=True)
class DataOptions:
    """How stored data becomes model input beyond --scale/--mean/--std (the shared data options)."""

    layout: str = "auto"
    resize: str = DEFAULT_RESIZE
    channels: str = "rgb"
    preset: str | None = None
    classes: str | None = None  # --classes FILE: class names, one per line, in the model's output order

    @classmethod
    def of(cls, config) -> "DataOptions":
        """The data options of any config that carries them as fields (ScanConfig, AttackConfig, MetricsConfig)."""
        return cls(config.layout, config.resize, config.channels, config.preset, getattr(config, "classes", None))

    def validate(self) -> None:
        if self.layout not in ("auto", "nchw", "nhwc"):
            raise ConfigError(f"--layout must be auto, nchw or nhwc, not '{self.layout}'")
        if self.resize not in RESIZE_POLICIES:
            raise ConfigError(f"--resize must be one of {', '.join(RESIZE_POLICIES)}, not '{self.resize}'")
        if self.channels not in CHANNEL_ORDERS:
            raise ConfigError(f"--channels must be rgb or bgr, not '{self.channels}'")
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"--preset must be one of {', '.join(PRESETS)}, not '{self.preset}'")


@dataclass(frozen=True)
class Prepared:
    """Everything between a ``--data`` argument and model input, with what the report says about it."""

    dataset: Dataset | None  # None: no --data (synthetic inputs are drawn by the caller)
    pre: Preprocess
    layout: Layout
    notes: tuple[str, ...]
    config: dict  # recorded under the report's config["preprocess"]
    images: bool  # the data came from an image folder (stored units are pixel values 0-255)


def preset_preprocess(
    scale: float, mean: tuple[float, ...], std: tuple[float, ...], options: DataOptions, layout: Layout
) -> tuple[Preprocess, str]:
    """The Preprocess of ``--preset`` (mean/std put in the model's channel order) or of --scale/--mean/--std."""
    axis = 0 if layout.channel_axis is None else layout.channel_axis
    given = (scale, tuple(mean), tuple(std)) != (1.0, (0.0,), (1.0,))
    if options.preset is None:
        return Preprocess(scale, tuple(mean), tuple(std), axis), "from --scale/--mean/--std"
    if given:
        raise ConfigError(
            f"--preset {options.preset} sets the scale, mean and std itself; give either --preset or --scale/--mean/--std"
        )
    p = PRESETS[options.preset]
    mean_v, std_v = p.mean, p.std
    if len(mean_v) > 1:
        if layout.channels not in (3, 4):
            raise ConfigError(
                f"--preset {options.preset} has per-channel values for RGB images, but the model's input has "
                f"{layout.channels or 'no'} colour channels; use --preset unit or --scale/--mean/--std"
            )
        if options.channels == "bgr":
            mean_v, std_v = mean_v[::-1], std_v[::-1]
        if layout.channels == 4:  # RGBA: alpha gets the unit scale only
            mean_v, std_v = mean_v + (0.0,), std_v + (1.0,)
    how = f"--preset {options.preset}: {p.description}" + (", reordered to BGR" if len(mean_v) > 1 and
                                                           options.channels == "bgr" else "")
    return Preprocess(p.scale, mean_v, std_v, axis), how


def prepare(
    model, data: str | None, samples: int | None, scale: float, mean: tuple[float, ...], std: tuple[float, ...],
    options: DataOptions,
) -> Prepared:
    """Layout, preprocessing and (when ``data`` is given) the samples, for any command that takes --data."""
    options.validate()
    shape = model.sample_shape
    layout, notes = detect_layout(model.proto, model.info.input.name, shape, options.layout)
    pre, how = preset_preprocess(scale, mean, std, options, layout)
    pre.check(shape)
    config = {"layout": layout.to_dict(), "preset": options.preset, "how": how, **pre.to_dict()}
    dataset, images = None, False
    if data is not None and Path(data).is_dir():
        folder = load_image_folder(data, shape, layout, options, samples)
        dataset, images = folder.dataset, True
        if folder.by_sorted_name:  # name labels numbered by sorted name: do they fit the model at all?
            k = model.n_classes
            if k is None:
                k = int(model.run(pre.apply(dataset.x[:1], shape)).shape[1])
            if k != len(folder.classes):
                raise DataError(
                    f"{data}: {len(folder.classes)} class names ({folder.labels_from}) but the model has {k} outputs, so "
                    "numbering them by sorted name cannot match the model's classes; pass --classes FILE (one class "
                    "name per line, in the model's output order)")
        notes.extend(folder.notes)
        config.update({"resize": options.resize, "channels": options.channels, "classes": folder.classes,
                       "labels_from": folder.labels_from})
        if options.preset is None and pre.is_identity:
            notes.append(
                "the images reach the model as raw pixel values 0-255; most models expect normalised inputs "
                "(--preset imagenet|inception|unit, or --scale/--mean/--std)"
            )
    elif data is not None:
        if options.channels != "rgb" or options.resize != DEFAULT_RESIZE:
            notes.append("--channels/--resize apply to image folders only; array data is read as stored")
        if options.classes is not None:
            notes.append("--classes applies to image folders only; the labels of array data are class indices")
        dataset = load_data(data, shape, samples)
    return Prepared(dataset, pre, layout, tuple(notes), config, images)


# ----------------------------------------------------------------------------- listing
@dataclass(frozen=True)
class ImageFolder:
    dataset: Dataset
    classes: list[str] | None
    labels_from: str  # "subfolders" | "labels.csv" | "none"
    notes: tuple[str, ...]
    by_sorted_name: bool = False  # class names numbered by sorted name (no --classes): prepare checks the count


def read_class_names(path: str | Path) -> list[str]:
    """--classes FILE: one class name per line, in the model's output order (blank lines skipped)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"--classes file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read --classes file {p}: {type(exc).__name__}") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DataError(f"--classes file {p} names no classes (one class name per line, in the model's output order)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"--classes file {p} names class '{dup[0]}' twice")
    return names


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def list_images(folder: Path) -> tuple[list[tuple[Path, int | None]], list[str] | None, str, list[str]]:
    """(files with labels, class names, where labels came from, notes), in a deterministic order.

    ``labels.csv`` (columns ``file,label``) wins; else subfolders are classes, sorted by name
    (the ImageFolder convention); else the folder's images are unlabelled.
    """
    notes: list[str] = []
    if (folder / LABELS_FILE).is_file():
        files, classes = _read_labels_csv(folder)
        return files, classes, LABELS_FILE, notes
    subdirs = sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    if subdirs:
        classes = [d.name for d in subdirs]
        files: list[tuple[Path, int | None]] = []
        for label, d in enumerate(subdirs):
            files.extend((p, label) for p in sorted((q for q in d.rglob("*") if _is_image(q)),
                                                    key=lambda q: q.relative_to(d).as_posix()))
        loose = [p for p in folder.iterdir() if _is_image(p)]
        if loose:
            notes.append(f"{len(loose)} image(s) directly in {folder.name}/ were skipped: with class subfolders only "
                         "their images are read")
        return files, classes, "subfolders", notes
    files = [(p, None) for p in sorted((q for q in folder.iterdir() if _is_image(q)), key=lambda q: q.name)]
    return files, None, "none", notes


def _read_labels_csv(folder: Path) -> tuple[list[tuple[Path, int | None]], list[str] | None]:
    path = folder / LABELS_FILE
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {type(exc).__name__}") from None
    rows = list(csv.reader(io.StringIO(text)))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "file" not in header or "label" not in header:
        raise DataError(f"{path} must start with a header naming the columns file,label")
    fi, li = header.index("file"), header.index("label")
    entries: list[tuple[str, str]] = []
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(fi, li):
            raise DataError(f"{path} line {n}: expected the columns file,label")
        entries.append((row[fi].strip(), row[li].strip()))
    root = folder.resolve()
    files: list[Path] = []
    for name, _ in entries:
        rel = PurePosixPath(name.replace("\\", "/"))
        target = (folder / rel).resolve()
        if rel.is_absolute() or (target != root and root not in target.parents):
            raise DataError(f"{path}: '{name}' points outside the image folder")
        if not target.is_file():
            raise DataError(f"{path}: image '{name}' is listed but missing")
        files.append(folder / rel)
    labels = [lab for _, lab in entries]
    if all(_is_int(lab) for lab in labels):
        values = [int(lab) for lab in labels]
        if any(v < 0 for v in values):
            raise DataError(f"{path}: labels must be class indices >= 0 or class names")
        return list(zip(files, values)), None
    classes = sorted(set(labels))  # class names: indices by sorted name, as for subfolders
    index = {c: i for i, c in enumerate(classes)}
    return [(f, index[lab]) for f, lab in zip(files, labels)], classes


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------- decoding
def image_mode(layout: Layout) -> str:
    """Pillow mode matching the model's channel count."""
    modes = {1: "L", 3: "RGB", 4: "RGBA"}
    if layout.channels not in modes or layout.height is None:
        raise ConfigError(
            "an image folder needs a model whose input is an image (1, 3 or 4 channels with two spatial axes, or a "
            f"flattened square grey image); this model's input is not ({layout.evidence})"
        )
    return modes[layout.channels]


def _target_size(layout: Layout) -> tuple[int, int]:
    return int(layout.width), int(layout.height)


def resize_image(im, size: tuple[int, int], policy: str):
    """Resize a Pillow image to ``size`` = (width, height) by ``policy`` (bilinear, antialiased)."""
    from PIL import Image

    w, h = size
    if im.size == (w, h):
        return im
    if policy == "stretch":
        return im.resize((w, h), Image.Resampling.BILINEAR)
    iw, ih = im.size
    s = max(w / iw, h / ih)  # the shorter side (relative to the target) lands on the target exactly
    nw, nh = max(w, round(iw * s)), max(h, round(ih * s))
    if (nw, nh) != (iw, ih):
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - w) // 2, (nh - h) // 2
    return im.crop((left, top, left + w, top + h))


def decode_image(path: Path, layout: Layout, resize: str, channels: str) -> np.ndarray:
    """One image file -> uint8 array in the model's per-sample layout. One-line DataError on any failure."""
    from PIL import Image, ImageOps

    mode = image_mode(layout)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse there too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                im = _to_mode(im, mode)
                im = resize_image(im, _target_size(layout), resize)
                arr = np.asarray(im, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(
            f"refusing {path}: its declared size exceeds Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} "
            "pixels"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise DataError(f"cannot read image {path}: {_reason(exc)}") from None
    if mode == "L":
        arr = arr[:, :, None]
    if channels == "bgr" and arr.shape[2] >= 3:
        arr = np.concatenate([arr[:, :, 2::-1], arr[:, :, 3:]], axis=2)
    if layout.name == "nchw":
        return np.ascontiguousarray(arr.transpose(2, 0, 1))
    if layout.name == "nhwc":
        return arr
    return arr.reshape(-1)  # flat: a grey image row by row


def _reason(exc: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not a PNG, JPEG or BMP image Pillow can identify"
    text = " ".join(str(exc).split())
    if "truncated" in text.lower() or isinstance(exc, (EOFError, SyntaxError, struct.error)):
        return f"truncated or corrupt file ({text or type(exc).__name__})"
    return f"{type(exc).__name__}: {text}"[:200]


def _to_mode(im, mode: str):
    """Convert to L/RGB/RGBA; 16-bit greys keep their range (scaled to 8 bits), palettes go through RGBA."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or wide.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(np.rint(wide * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im if im.mode == mode else im.convert(mode)


def load_image_folder(
    folder: str | Path, sample_shape: tuple[int, ...], layout: Layout, options: DataOptions, samples: int | None
) -> ImageFolder:
    """Read the first ``samples`` images of ``folder`` (deterministic order) as a uint8 ``Dataset``."""
    root = Path(folder)
    if samples is not None and samples < 1:
        raise ConfigError("--samples must be >= 1")
    image_mode(layout)  # refuse a non-image model before listing anything
    files, classes, labels_from, notes = list_images(root)
    if not files:
        raise DataError(f"no PNG, JPEG or BMP images in folder {root}")
    if samples is not None:
        files = files[:samples]
    x = np.empty((len(files), *sample_shape), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        x[i] = decode_image(path, layout, options.resize, options.channels).reshape(sample_shape)
    y = None if labels_from == "none" else np.array([lab for _, lab in files], dtype=np.int64)
    by_sorted_name = False
    if options.classes is not None and labels_from != "none":
        names = read_class_names(options.classes)
        if classes is not None:  # names (subfolders or labels.csv) -> the model's indices
            missing = [c for c in classes if c not in names]
            if missing:
                raise DataError(f"class '{missing[0]}' ({labels_from}) is not in --classes {options.classes} "
                                f"({len(names)} names: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
            remap = np.array([names.index(c) for c in classes], dtype=np.int64)
            y = remap[y]
        elif y is not None and y.size and int(y.max()) >= len(names):
            raise DataError(f"label {int(y.max())} in {LABELS_FILE} is not an index of the {len(names)} classes of "
                            f"--classes {options.classes}")
        classes = names
        shown = ", ".join(f"{i}={c}" for i, c in enumerate(names[:10])) + (", ..." if len(names) > 10 else "")
        notes.append(f"labels from {labels_from}, class indices from --classes {options.classes} (the model's order: "
                     f"{shown})")
    elif classes is not None:
        by_sorted_name = True
        shown = ", ".join(f"{i}={c}" for i, c in enumerate(classes[:10])) + (", ..." if len(classes) > 10 else "")
        notes.append(f"labels from {labels_from}: class indices follow sorted names ({shown}); if the model's class "
                     "order differs, accuracy is wrong: pass --classes FILE (one class name per line, in the model's "
                     "output order)")
    elif labels_from == LABELS_FILE:
        notes.append(f"labels from {LABELS_FILE} (class indices as written)")
    side = f"{layout.width}x{layout.height}"
    notes.append(f"{len(files)} image(s) from {root} resized to {side} ({options.resize}), {options.channels.upper()} "
                 f"order, {layout.name.upper()} layout; stored units are pixel values 0-255")
    return ImageFolder(Dataset(x=x, y=y, source=str(root)), classes, labels_from, tuple(notes), by_sorted_name)

