"""Median relative error, mean error and 95% interval coverage of smoothed_fisher on the binarized linear model
(tests/test_smoothed.py: d = 400, sigma = 0.2, budget 2000, t in T_POINTS, points from rng(4)).

    python bench/smoothed_ortho.py [SEEDS]       (run from the repository root)
"""
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent.parent))
from fimaudit.estimators.smoothed import smoothed_fisher  # noqa: E402
from fimaudit.model import LogProbOracle, load_model  # noqa: E402
from tests.builders import save  # noqa: E402
from tests.test_smoothed import (B_STEP, D_STEP, SIGMA_STEP, T_POINTS, step_model, step_point,  # noqa: E402
                                 step_truth)

seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
w = np.random.default_rng(11).standard_normal(D_STEP).astype(np.float32).astype(np.float64)
path = save(step_model(w, B_STEP), Path(tempfile.mkdtemp()) / "step.onnx")
oracle = LogProbOracle(load_model(path), "probabilities")
rng = np.random.default_rng(4)
points = [step_point(w, t, rng) for t in T_POINTS]
t0 = time.time()
errs, hits = [], []
for i, x in enumerate(points):
    truth = step_truth(w, x)
    e_t = []
    for seed in range(seeds):
        est = smoothed_fisher(oracle, x, SIGMA_STEP, 2000, (seed, i))
        e_t.append(est.lambda_max / truth - 1)
        hits.append(est.lambda_max_ci[0] <= truth <= est.lambda_max_ci[1])
    e_t = np.array(e_t)
    errs.extend(e_t)
    print(f"t = {T_POINTS[i]:+.1f}: median |err| {np.median(np.abs(e_t)):.4f}, mean {e_t.mean():+.4f} "
          f"+- {e_t.std(ddof=1) / np.sqrt(seeds):.4f}, sd {e_t.std(ddof=1):.4f}", flush=True)
errs = np.array(errs)
print(f"all {errs.size}: median |err| {np.median(np.abs(errs)):.4f}, mean {errs.mean():+.4f} "
      f"+- {errs.std(ddof=1) / np.sqrt(errs.size):.4f}, coverage {np.mean(hits):.3f} ({sum(hits)}/{len(hits)}), "
      f"{time.time() - t0:.0f} s")
