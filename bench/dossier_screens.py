"""Build audit dossiers (and every other report kind's HTML) on one model of each sample family and one corpus
model, then take headless-Chromium screenshots of each page (screen, 1400 px wide) and print each dossier to PDF
(A4 and Letter), rendering the PDF pages to PNG when pypdfium2 is importable. The images are for a person to look
at (#19 items 5 and 6); nothing here asserts.

    python bench/dossier_screens.py --out /tmp/dossier_screens [--samples 8] [--only vgg_small cifar10_resnet_2b]

Needs chromium (or chromium-browser / google-chrome) on PATH; the corpus model needs FIMAUDIT_REALMODELS (or
--realmodels) pointing at the folder with manifest.json. Each audit uses a small policy (samples, budget and
sample counts cut down) so that the whole run takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FMNIST = ["--scale", "1/255", "--mean", "0.286", "--std", "0.353"]
SAMPLE_MODELS = ("vgg_small", "resnet_small", "densenet_small", "vit_tiny", "mlp_small")
CORPUS = ("cifar10_resnet_2b",)

POLICY = """[audit]
samples = {samples}
budget = {budget}
eps = {eps}
attacks = ["pgd", "square"]
taus = [0.1]
clever_samples = 3
clever_points = 20
metrics_samples = {metrics}
certify_sigma = {sigma}
certify_n = 200
certify_radii = [0.0, 0.1, 0.25]

[policy]
name = "dossier screenshots"
checks = [
  "clean.accuracy >= 0.5",
  "fisher.lambda_max.median <= 50",
  "bound.finite = true",
  "attack.worst.linf[{eps_hi}].robust_accuracy >= 0.2",
  "clever.median_score >= 0",
  "validity.spearman >= 0",
]
"""


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)  # type: ignore[return-value]
    sys.exit("no chromium on PATH")


def chromium(args: list[str]) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", *args],
                       capture_output=True, timeout=180, check=False)


def screenshot(page: Path, png: Path, width: int = 1400, height: int = 9000) -> None:
    """The whole page at ``width``: a tall window, then the blank bottom cropped (Pillow is a fimaudit dependency)."""
    chromium([f"--screenshot={png}", f"--window-size={width},{height}", page.resolve().as_uri()])
    if png.exists():
        import numpy as np
        from PIL import Image

        im = Image.open(png).convert("RGB")
        rows = np.where(np.asarray(im.convert("L")).min(axis=1) < 250)[0]
        if rows.size:
            im.crop((0, 0, im.width, min(im.height, int(rows.max()) + 40))).save(png)


def print_pdf(page: Path, pdf: Path, paper: str) -> list[Path]:
    """Print ``page`` to PDF on A4 or Letter (an @page size injected into a copy) and render its pages to PNG."""
    size = {"a4": "A4", "letter": "letter"}[paper]
    copy = pdf.with_suffix(".html")
    copy.write_text(page.read_text().replace("</style>", f"@page{{size:{size}}}</style>", 1))
    chromium(["--no-pdf-header-footer", f"--print-to-pdf={pdf}", copy.resolve().as_uri()])
    copy.unlink()
    try:
        import pypdfium2 as pdfium  # optional: pip install pypdfium2
    except ImportError:
        return []
    out = []
    doc = pdfium.PdfDocument(str(pdf))
    for i in range(len(doc)):
        png = pdf.with_name(f"{pdf.stem}_p{i + 1}.png")
        doc[i].render(scale=1.4).to_pil().save(png)
        out.append(png)
    return out


def fimaudit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fimaudit", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "SOURCE_DATE_EPOCH": "0"})


def model_args(name: str, realmodels: Path | None) -> tuple[str, list[str], list[float], float] | None:
    """(model path, data and preprocessing options, eps grid, certify sigma) of a sample or corpus model."""
    if name in SAMPLE_MODELS:
        man = json.loads((ROOT / "sample_models" / "manifest.json").read_text())
        entry = next(m for m in (man["models"] if isinstance(man, dict) else man) if m["file"] == f"{name}.onnx")
        return (f"sample_models/{name}.onnx", ["--data", f"sample_models/{entry['data']}", *FMNIST], [0.01, 0.03],
                0.25 / 0.353)
    if realmodels is None:
        return None
    entry = json.loads((realmodels / "manifest.json").read_text())[name]
    lo, hi = entry["x_range"]
    eps = float(entry["eps"][0])
    # the corpus data are already in model-input units: no scale/mean/std, the attacks clip to the data's range
    return (str(realmodels / entry["file"]), ["--data", str(realmodels / entry["data"]), "--input-range", f"{lo},{hi}"],
            [round(eps / 2, 6), round(eps, 6)], 0.25 * (hi - lo))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "dossier_screens")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--budget", type=int, default=300)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--realmodels", type=Path, default=os.environ.get("FIMAUDIT_REALMODELS"))
    ap.add_argument("--no-pdf", action="store_true")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    realmodels = Path(a.realmodels) if a.realmodels else None
    for name in a.only or (*SAMPLE_MODELS, *CORPUS):
        spec = model_args(name, realmodels)
        if spec is None:
            print(f"{name}: skipped (no --realmodels / FIMAUDIT_REALMODELS)")
            continue
        model, data, eps, sigma = spec
        d = a.out / name
        d.mkdir(exist_ok=True)
        policy = d / "policy.toml"
        policy.write_text(POLICY.format(samples=a.samples, budget=a.budget, eps=json.dumps(eps), eps_hi=f"{eps[-1]:g}",
                                        metrics=max(40, a.samples), sigma=round(sigma, 4)))
        t0 = time.perf_counter()
        r = fimaudit("audit", model, *data, "--policy", str(policy), "--out", str(d / "dossier"), "-q")
        print(f"{name}: audit exit {r.returncode} in {time.perf_counter() - t0:.0f} s" + (f": {r.stderr.strip()[-300:]}"
                                                                                           if r.returncode > 1 else ""))
        page = d / "dossier" / "audit.html"
        if not page.exists():
            continue
        screenshot(page, d / "audit_screen.png")
        screenshot(page, d / "audit_narrow.png", width=700)
        if not a.no_pdf:
            for paper in ("a4", "letter"):
                pngs = print_pdf(page, d / f"audit_{paper}.pdf", paper)
                print(f"  {paper}: {len(pngs)} page(s) rendered" if pngs else f"  {paper}: PDF written")
        if name == (a.only or SAMPLE_MODELS)[0]:  # every other report kind once, on the first model
            for kind, extra in (("attack", ["--attack", "pgd", "--eps", ",".join(map(str, eps)), "--budget", "200"]),
                                ("clever", ["--samples", "2"]), ("metrics", []), ("scan", ["--budget", "200"]),
                                ("certify", ["--sigma", f"{sigma:.4g}", "--n", "200", "--samples", "4"]), ("bounds", None)):
                js = d / f"{kind}.json"
                args = [kind, model, *(data + ["--samples", str(min(6, a.samples))] + extra if extra is not None else []),
                        "--json", str(js), "-q"]
                if fimaudit(*args).returncode == 0:
                    fimaudit("report", str(js), "--format", "html", "--out", str(d / f"{kind}.html"))
                    screenshot(d / f"{kind}.html", d / f"{kind}_screen.png", height=2400)
            bounds_vit = d / "bounds_vit.json"
            if fimaudit("bounds", "sample_models/vit_tiny.onnx", "--json", str(bounds_vit), "-q").returncode == 0:
                fimaudit("report", str(bounds_vit), "--format", "html", "--out", str(d / "bounds_vit.html"))
                screenshot(d / "bounds_vit.html", d / "bounds_vit_screen.png", height=2400)
    print(f"screenshots under {a.out}")


if __name__ == "__main__":
    main()
