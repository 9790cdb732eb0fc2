"""Image folders as --data: labels, order, decoding, resize policies, channel order, layouts, presets, refusals."""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fimaudit.data import Preprocess
from fimaudit.errors import ConfigError, DataError
from fimaudit.images import DataOptions, decode_image, list_images, load_image_folder, preset_preprocess, prepare
from fimaudit.model.layout import Layout, image_layout

from . import builders as B

NCHW16 = image_layout("nchw", (3, 16, 16), "option", "test")
NHWC16 = image_layout("nhwc", (16, 16, 3), "option", "test")


def ramp_image(path: Path, w: int = 64, h: int = 32) -> Path:
    """R = 4 * column, G = 4 * row, B = 200: linear ramps, so bilinear resampling is exact inside."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, :, 0] = 4 * np.arange(w)[None, :]
    arr[:, :, 1] = 4 * np.arange(h)[:, None]
    arr[:, :, 2] = 200
    Image.fromarray(arr, "RGB").save(path)
    return path


# ------------------------------------------------------------------------ resize policies
def test_shorter_side_center_crop_against_hand_computed_pixels(tmp_path):
    # 64x32 -> scale 1/2 -> 32x16 -> crop columns 8..23. Resized column i samples the ramp at
    # 2i + 1/2 (pixel centres), i.e. R = 8i + 2; kept column k is i = 8 + k: R = 66 + 8k.
    arr = decode_image(ramp_image(tmp_path / "r.png"), NHWC16, "shorter-side+center-crop", "rgb")
    assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8
    rows = slice(1, 15)  # the first and last rows see the clamped border
    np.testing.assert_allclose(arr[rows, :, 0], np.broadcast_to(66 + 8 * np.arange(16), (14, 16)), atol=1)
    np.testing.assert_allclose(arr[rows, :, 1], np.broadcast_to((8 * np.arange(16) + 2)[rows, None], (14, 16)), atol=1)
    assert np.all(arr[:, :, 2] == 200)


def test_stretch_against_hand_computed_pixels(tmp_path):
    # Columns shrink by 4: R = 4 * (4i + 2 - 1/2) = 16i + 6; rows by 2 as above.
    arr = decode_image(ramp_image(tmp_path / "r.png"), NHWC16, "stretch", "rgb")
    inner = slice(1, 15)
    np.testing.assert_allclose(arr[inner, inner, 0], np.broadcast_to((16 * np.arange(16) + 6)[inner], (14, 14)), atol=1)
    np.testing.assert_allclose(arr[inner, inner, 1], np.broadcast_to((8 * np.arange(16) + 2)[inner, None], (14, 14)),
                               atol=1)


def test_crop_without_resampling_keeps_exact_centre_pixels(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(16, 24, 3), dtype=np.uint8)  # 24 wide: crop 4 columns each side
    Image.fromarray(arr).save(tmp_path / "n.png")
    got = decode_image(tmp_path / "n.png", NHWC16, "shorter-side+center-crop", "rgb")
    np.testing.assert_array_equal(got, arr[:, 4:20])


# ------------------------------------------------------------------ layout and channels
def test_bgr_order_and_nchw_vs_nhwc(tmp_path):
    path = ramp_image(tmp_path / "r.png")
    rgb = decode_image(path, NHWC16, "stretch", "rgb")
    bgr = decode_image(path, NHWC16, "stretch", "bgr")
    chw = decode_image(path, NCHW16, "stretch", "bgr")
    np.testing.assert_array_equal(bgr, rgb[:, :, ::-1])
    assert np.all(bgr[:, :, 0] == 200)  # blue first
    np.testing.assert_array_equal(chw, bgr.transpose(2, 0, 1))


def test_modes_rgba_palette_grey_and_16_bit(tmp_path):
    Image.new("RGBA", (16, 16), (10, 20, 30, 0)).save(tmp_path / "a.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "a.png", NHWC16, "stretch", "rgb")[0, 0], [10, 20, 30])
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 90, 120, 150] + [0] * 762)
    pal.save(tmp_path / "p.png", transparency=bytes([0, 255, 128]))  # per-entry alpha, as PNG's tRNS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow warns when palette transparency is converted carelessly
        np.testing.assert_array_equal(decode_image(tmp_path / "p.png", NHWC16, "stretch", "rgb")[3, 3], [90, 120, 150])
    grey = image_layout("nchw", (1, 16, 16), "option", "test")
    Image.new("RGB", (16, 16), (100, 150, 200)).save(tmp_path / "c.png")
    # ITU-R 601-2 luma, as Pillow's L: 0.299 R + 0.587 G + 0.114 B = 140.75
    assert abs(int(decode_image(tmp_path / "c.png", grey, "stretch", "rgb")[0, 0, 0]) - 141) <= 1
    wide = np.full((16, 16), 65535, np.uint16)
    wide[:8] = 32896  # 128 * 257
    Image.fromarray(wide).save(tmp_path / "w.png")
    got = decode_image(tmp_path / "w.png", grey, "stretch", "rgb")
    assert got[0, 0, 0] == 128 and got[0, 15, 0] == 255
    # Grey image into an RGB model: replicated channels.
    assert list(decode_image(tmp_path / "w.png", NHWC16, "stretch", "rgb")[0, 0]) == [128, 128, 128]


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((8, 16), np.uint8)
    arr[:, 8:] = 255  # left half black, right half white, stored 16 wide x 8 high
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: the left half goes to the top
    Image.fromarray(arr, "L").save(tmp_path / "o.png", exif=exif)
    tall = image_layout("nchw", (1, 16, 8), "option", "test")  # 8 wide x 16 high, as displayed
    got = decode_image(tmp_path / "o.png", tall, "stretch", "rgb")[0]
    assert np.all(got[:8] == 0) and np.all(got[8:] == 255)


@pytest.mark.parametrize("fmt, suffix, tol", [("PNG", ".png", 0), ("JPEG", ".jpg", 3), ("BMP", ".bmp", 0)])
def test_formats(tmp_path, fmt, suffix, tol):
    Image.new("RGB", (20, 16), (30, 140, 250)).save(tmp_path / f"c{suffix}", fmt)
    got = decode_image(tmp_path / f"c{suffix}", NCHW16, "shorter-side+center-crop", "rgb").astype(int)
    assert np.all(np.abs(got - np.array([30, 140, 250])[:, None, None]) <= tol)


# ----------------------------------------------------------------------- labels and order
def make_folder(root: Path, layout: dict[str, list[str]]) -> Path:
    for sub, names in layout.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            Image.new("RGB", (16, 16), (i * 40, len(sub) * 20, 0)).save(root / sub / name)
    return root


def test_labels_from_subfolders_sorted_and_deterministic(tmp_path):
    root = make_folder(tmp_path / "photos", {"dog": ["b.png", "a.jpg"], "ant": ["z.bmp"], "cat": ["c.png"]})
    (root / "cat" / "x.txt").write_text("not an image")
    files, classes, source, _ = list_images(root)
    assert classes == ["ant", "cat", "dog"] and source == "subfolders"
    assert [(p.relative_to(root).as_posix(), y) for p, y in files] == [
        ("ant/z.bmp", 0), ("cat/c.png", 1), ("dog/a.jpg", 2), ("dog/b.png", 2)]
    folder = load_image_folder(root, (16, 16, 3), NHWC16, DataOptions(), samples=3)
    assert folder.dataset.y.tolist() == [0, 1, 2] and folder.dataset.x.shape == (3, 16, 16, 3)
    assert any("0=ant, 1=cat, 2=dog" in n for n in folder.notes)


def test_labels_csv_indices_names_and_refusals(tmp_path):
    root = make_folder(tmp_path / "p", {".": ["b.png", "a.png", "c.png"]})
    (root / "labels.csv").write_text("file,label\nc.png,7\na.png,2\n")
    files, classes, source, _ = list_images(root)
    assert source == "labels.csv" and classes is None
    assert [(p.name, y) for p, y in files] == [("c.png", 7), ("a.png", 2)]  # the file's order
    (root / "labels.csv").write_text("label,file\nzebra,b.png\ncat,a.png\n")
    files, classes, _, _ = list_images(root)
    assert classes == ["cat", "zebra"] and [y for _, y in files] == [1, 0]
    for bad, msg in (("file,label\n../x.png,1\n", "outside the image folder"),
                     ("file,label\nmissing.png,1\n", "listed but missing"),
                     ("name,class\na.png,1\n", "file,label")):
        (root / "labels.csv").write_text(bad)
        with pytest.raises(DataError, match=msg):
            list_images(root)


def test_unlabelled_flat_folder_in_name_order(tmp_path):
    root = make_folder(tmp_path / "p", {".": ["b.png", "a.png", "c.png"]})
    files, classes, source, _ = list_images(root)
    assert [p.name for p, _ in files] == ["a.png", "b.png", "c.png"] and source == "none" and classes is None
    assert load_image_folder(root, (16, 16, 3), NHWC16, DataOptions(), None).dataset.y is None


# ------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("preset, pixel, want", [
    ("imagenet", 255, [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]),
    ("imagenet", 0, [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]),
    ("inception", 0, [-1.0] * 3), ("inception", 255, [1.0] * 3), ("inception", 127.5, [0.0] * 3),
    ("unit", 51, [0.2] * 3), ("none", 51, [51.0] * 3),
])
def test_preset_numbers(preset, pixel, want):
    for layout, order in ((NHWC16, "rgb"), (NCHW16, "bgr")):
        pre, how = preset_preprocess(1.0, (0.0,), (1.0,), DataOptions(preset=preset, channels=order), layout)
        shape = (16, 16, 3) if layout.name == "nhwc" else (3, 16, 16)
        u = pre.apply(np.full((1, *shape), pixel, dtype=np.float64), shape)[0]
        got = u[0, 0] if layout.name == "nhwc" else u[:, 0, 0]
        np.testing.assert_allclose(got, want if order == "rgb" else want[::-1], rtol=1e-12)
        assert preset in how


def test_preset_conflicts_and_grey_models():
    with pytest.raises(ConfigError, match="either --preset or --scale"):
        preset_preprocess(1 / 255, (0.0,), (1.0,), DataOptions(preset="unit"), NHWC16)
    grey = image_layout("nchw", (1, 16, 16), "option", "test")
    with pytest.raises(ConfigError, match="per-channel values for RGB"):
        preset_preprocess(1.0, (0.0,), (1.0,), DataOptions(preset="imagenet"), grey)
    pre, _ = preset_preprocess(1.0, (0.0,), (1.0,), DataOptions(preset="inception"), grey)
    assert pre == Preprocess(1 / 255, (0.5,), (0.5,), 0)
    with pytest.raises(ConfigError, match="--preset must be"):
        DataOptions(preset="caffe").validate()


# ------------------------------------------------------------------------------ refusals
def bomb_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` pixels (the pixel data is tiny and wrong)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_refused_in_one_line(tmp_path, monkeypatch):
    path = bomb_png(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(DataError) as err:
        decode_image(path, NHWC16, "stretch", "rgb")
    assert "decompression-bomb" in str(err.value) and "bomb.png" in str(err.value) and "\n" not in str(err.value)
    # Between the limit and twice the limit Pillow only warns: refused too (the guard stays on).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.new("RGB", (12, 12)).save(tmp_path / "mid.png")
    with pytest.raises(DataError, match="decompression-bomb"):
        decode_image(tmp_path / "mid.png", NHWC16, "stretch", "rgb")


def test_truncated_and_fake_images_refused_naming_the_file(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot read image .*t\.jpg: truncated"):
        decode_image(tmp_path / "t.jpg", NHWC16, "stretch", "rgb")
    (tmp_path / "f.png").write_text("hello")
    with pytest.raises(DataError, match=r"f\.png: not a PNG, JPEG or BMP"):
        decode_image(tmp_path / "f.png", NHWC16, "stretch", "rgb")


def test_non_image_models_and_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PNG, JPEG or BMP images"):
        load_image_folder(tmp_path / "empty", (16, 16, 3), NHWC16, DataOptions(), None)
    flat = Layout("flat", None, None, None, None, "none", "per-sample shape [10] has no image axes")
    with pytest.raises(ConfigError, match="needs a model whose input is an image"):
        load_image_folder(tmp_path / "empty", (10,), flat, DataOptions(), None)


# ------------------------------------------------------------------------- through prepare
def test_prepare_feeds_a_flattened_grey_mlp(tmp_path):
    """A 784-input MLP gets 28x28 grey images row by row; --preset unit gives [0, 1] inputs."""
    from fimaudit.model import load_model

    w = np.random.default_rng(0).standard_normal((3, 784))
    model = load_model(B.save(B.linear_model(w, np.zeros(3), sample_shape=(784, 1)), tmp_path / "m.onnx"), device="cpu")
    arr = np.zeros((28, 28), np.uint8)
    arr[0, 1] = 255  # second pixel of the first row
    (tmp_path / "d" / "seven").mkdir(parents=True)
    Image.fromarray(arr, "L").save(tmp_path / "d" / "seven" / "a.png")
    (tmp_path / "classes.txt").write_text("six\nseven\neight\n")  # one folder, three classes: --classes maps it
    prep = prepare(model, str(tmp_path / "d"), None, 1.0, (0.0,), (1.0,),
                   DataOptions(preset="unit", classes=str(tmp_path / "classes.txt")))
    u = prep.pre.apply(prep.dataset.x, model.sample_shape)
    assert u.shape == (1, 784, 1) and u[0, 1, 0] == 1.0 and u.sum() == 1.0
    assert prep.layout.name == "flat" and prep.images and prep.dataset.y.tolist() == [1]


def test_corpus_photos_round_trip_keep_the_accuracy(tmp_path):
    """Corpus models whose inputs are pixels in [0, 1]: written as PNGs and read back with --preset unit,
    they classify as from the arrays (a wrong layout or channel order would not)."""
    root = os.environ.get("FIMAUDIT_REALMODELS")
    if not root:
        pytest.skip("FIMAUDIT_REALMODELS is not set")
    from fimaudit.model import load_model

    done = 0
    for path in sorted(Path(root).glob("*.onnx")):
        with np.load(path.with_suffix(".npz")) as z:
            x, y = z["x"], z["y"]
        if x.ndim != 4 or x.min() < -1e-6 or x.max() > 1 + 1e-6:
            continue  # normalised outside the graph, or not an image input
        hwc = x[0].shape[-1] in (1, 3) and x[0].shape[0] not in (1, 3)
        folder = tmp_path / path.stem
        for i, (img, label) in enumerate(zip(x, y)):
            pixels = np.rint(255 * (img if hwc else img.transpose(1, 2, 0))).astype(np.uint8)
            (folder / f"{int(label):02d}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(folder / f"{int(label):02d}" /
                                                                                     f"{i:03d}.png")
        (folder / "labels.csv").write_text("file,label\n" + "".join(
            f"{int(label):02d}/{i:03d}.png,{int(label)}\n" for i, label in enumerate(y)))
        model = load_model(path, device="cpu")
        prep = prepare(model, str(folder), None, 1.0, (0.0,), (1.0,), DataOptions(preset="unit"))
        u = prep.pre.apply(prep.dataset.x, model.sample_shape)
        assert np.max(np.abs(u - x)) <= 0.5 / 255 + 1e-6  # the same inputs up to 8-bit rounding
        pred = np.argmax(model.run(u.astype(np.float32)), axis=1)
        assert np.mean(pred == prep.dataset.y) >= 0.9, path.name
        done += 1
    assert done >= 2


def test_corruptions_blur_space_not_channels_on_nhwc():
    """Each channel constant over the image: a spatial blur leaves it unchanged in either layout."""
    from fimaudit.metrics.suite import _corrupt_images

    x = np.broadcast_to(np.array([0.0, 0.5, 1.0]), (2, 16, 16, 3)).copy()
    out = _corrupt_images(x, "gaussian_blur", 5, np.random.default_rng(0), NHWC16)
    np.testing.assert_allclose(out, x, atol=1e-12)


# ------------------------------------------------------------------------------ the CLI
def _cli(*args):
    import json

    from typer.testing import CliRunner

    from fimaudit.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    return res, (json.loads(res.stdout) if res.exit_code == 0 and "--json" in args and "-" in args else None)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Photos of assorted sizes and formats in two class folders, and a 224x224 MobileNet-style model."""
    tmp = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(5)
    for cls, items in (("cat", [((300, 200), "a.jpg"), ((224, 224), "b.png")]), ("dog", [((180, 240), "c.bmp")])):
        (tmp / "photos" / cls).mkdir(parents=True)
        for (w, h), name in items:
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp / "photos" / cls / name)
    model = B.save(B.mobile_model(B.mobile_weights(np.random.default_rng(0)), spatial=(224, 224)), tmp / "m224.onnx")
    return tmp, model


def test_cli_scans_a_224_model_from_a_photo_folder_with_a_preset(photos):
    tmp, model = photos
    (tmp / "classes.txt").write_text("dog\nbird\ncat\nfish\nfrog\n")  # the model's 5 outputs, in its order
    res, rep = _cli("scan", model, "--data", tmp / "photos", "--preset", "imagenet", "--budget", "40", "--no-bounds",
                    "--classes", tmp / "classes.txt", "-q", "--json", "-", "--report", tmp / "r.md")
    assert res.exit_code == 0, res.stderr
    pp = rep["config"]["preprocess"]
    assert rep["config"]["preset"] == "imagenet" and pp["how"].startswith("--preset imagenet")
    assert pp["mean"] == [0.485, 0.456, 0.406] and pp["std"] == [0.229, 0.224, 0.225] and pp["scale"] == 1 / 255
    assert pp["layout"]["name"] == "nchw" and pp["layout"]["source"] == "graph"
    assert pp["classes"] == ["dog", "bird", "cat", "fish", "frog"]
    assert [s["label"] for s in rep["samples"]] == [2, 2, 0]
    assert all(np.isfinite(s["lambda_max"]) and s["lambda_max"] > 0 for s in rep["samples"])
    assert rep["units"]["space"] == "input" and "--preset imagenet" in rep["units"]["description"]
    assert "- preprocess: --preset imagenet: pixel/255" in (tmp / "r.md").read_text()
    res, rep = _cli("scan", model, "--data", tmp / "photos", "--preset", "imagenet", "--space", "data", "--samples", "1",
                    "--classes", tmp / "classes.txt", "--budget", "40", "--no-bounds", "-q", "--json", "-")
    assert res.exit_code == 0 and "pixel-value unit" in rep["units"]["description"]


def test_cli_refuses_broken_images_in_one_line(photos, monkeypatch):
    tmp, model = photos
    bad = tmp / "bad"
    (bad / "x").mkdir(parents=True)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(bad / "x" / "ok.jpg")
    data = (bad / "x" / "ok.jpg").read_bytes()
    (bad / "x" / "cut.jpg").write_bytes(data[: len(data) // 3])
    res, _ = _cli("scan", model, "--data", bad, "--preset", "imagenet", "-q")
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and "cut.jpg" in lines[0] and "Traceback" not in res.output
    (bad / "x" / "cut.jpg").unlink()
    bomb_png(bad / "x" / "huge.png", 100_000, 100_000)
    res, _ = _cli("attack", model, "--data", bad, "--preset", "unit", "-q")
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and "decompression-bomb" in lines[0] and "huge.png" in lines[0]
    res, _ = _cli("scan", model, "--data", bad, "--preset", "imagenet", "--mean", "0.5", "-q")
    assert res.exit_code == 2 and "either --preset or --scale" in res.stderr


# ------------------------------------------------------------------------------ --classes
@pytest.mark.parametrize("command", ["scan", "metrics", "attack", "certify", "clever", "audit"])
def test_classes_file_maps_names_to_the_models_order_in_every_data_command(photos, command):
    """--classes is a shared data option: every command with --data takes it; without it, two folder names for a
    5-class model are refused in one line (exit 2) before anything runs."""
    tmp, model = photos
    (tmp / "classes.txt").write_text("dog\nbird\ncat\nfish\nfrog\n")
    own = {"scan": ["--budget", "20", "--no-bounds"], "metrics": ["--no-corruptions"],
           "attack": ["--attack", "fgsm", "--eps", "0.01"], "certify": ["--sigma", "0.25", "--n0", "2", "--n", "12"],
           "clever": ["--points", "20", "--seeds", "1"], "audit": ["--out", tmp / f"dossier-{command}"]}[command]
    base = [command, model, "--data", tmp / "photos", "--preset", "imagenet", "--samples", "1", "-q"]
    out = ["--json", tmp / f"{command}.json"] if command != "audit" else []
    res, _ = _cli(*base, *own, *out)
    assert res.exit_code == 2 and not (tmp / f"dossier-{command}").exists() and not (tmp / f"{command}.json").exists()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "2 class names" in lines[0] and "5 outputs" in lines[0] and "--classes FILE" in lines[0]
    if command in ("scan", "attack"):  # the mapped labels, end to end (the others run long or hold no labels)
        res, _ = _cli(*base, *own, "--classes", tmp / "classes.txt", *out)
        assert res.exit_code == 0, res.stderr
        import json

        rep = json.loads((tmp / f"{command}.json").read_text())
        labels = ([s["label"] for s in rep["samples"]] if command == "scan"
                  else [s["label"] for s in rep["results"][0]["samples"]])
        assert labels == [2]


def test_classes_file_remaps_labels_csv_names_and_refuses_what_does_not_fit(tmp_path):
    from fimaudit.errors import DataError
    from fimaudit.model import load_model

    w = np.random.default_rng(0).standard_normal((3, 16))
    model = load_model(B.save(B.linear_model(w, np.zeros(3), sample_shape=(1, 4, 4)), tmp_path / "m.onnx"), device="cpu")
    root = tmp_path / "imgs"
    root.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((4, 4), np.uint8), "L").save(root / name)
    (root / "labels.csv").write_text("file,label\na.png,cat\nb.png,airplane\nc.png,bird\n")
    # sorted names (airplane=0, bird=1, cat=2) and the model has 3 outputs: allowed, with a note that says how
    prep = prepare(model, str(root), None, 1.0, (0.0,), (1.0,), DataOptions())
    assert prep.dataset.y.tolist() == [2, 0, 1]
    assert any("class indices follow sorted names" in n and "--classes" in n for n in prep.notes)
    # the model's own order (CIFAR: airplane=0, ..., bird=2, cat=3 would need 4+ names; here cat, bird, airplane)
    (tmp_path / "c.txt").write_text("cat\nbird\nairplane\n")
    prep = prepare(model, str(root), None, 1.0, (0.0,), (1.0,), DataOptions(classes=str(tmp_path / "c.txt")))
    assert prep.dataset.y.tolist() == [0, 2, 1] and not any("follow sorted names" in n for n in prep.notes)
    for text, needle in (("cat\nbird\n", "'airplane'"), ("cat\ncat\nbird\n", "twice"), ("\n\n", "no classes")):
        (tmp_path / "c.txt").write_text(text)
        with pytest.raises(DataError, match=needle):
            prepare(model, str(root), None, 1.0, (0.0,), (1.0,), DataOptions(classes=str(tmp_path / "c.txt")))
    with pytest.raises(DataError, match="not found"):
        prepare(model, str(root), None, 1.0, (0.0,), (1.0,), DataOptions(classes=str(tmp_path / "missing.txt")))
