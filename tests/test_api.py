"""The Python API mirrors the CLI: keyword options with the CLI's types and checks, ValueErrors that name them."""

from __future__ import annotations

from pathlib import Path

import pytest

import fimaudit
from fimaudit.errors import ConfigError, OptionError
from fimaudit.scan import ScanConfig

ZOO = Path(__file__).resolve().parent.parent / "sample_models"
MODEL, DATA = ZOO / "vgg_small.onnx", ZOO / "fmnist_test_1000_28.npz"


@pytest.mark.parametrize(("options", "needle"), [
    ({"samples": 0}, "samples must be >= 1"),
    ({"samples": 2.5}, "samples must be an integer"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"scale": "abc"}, "scale 'abc'"),
    ({"scale": 0}, "scale must be a nonzero"),
    ({"mean": [0.1, "x"]}, "mean must be a number"),
    ({"std": 0}, "std must be positive"),
    ({"input_range": (1, 0)}, "input_range must be (lo, hi)"),
    ({"input_shape": "a,b"}, "input_shape must be positive integers"),
    ({"no_dither": "yes"}, "no_dither must be True or False"),
    ({"method": "nope"}, "--method must be one of"),
    ({"layout": "chw"}, "--layout must be"),
    ({"bogus": 1}, "unknown option 'bogus'"),
])
def test_bad_option_values_are_value_errors_that_name_the_option(options, needle):
    with pytest.raises(ValueError) as err:
        fimaudit.scan(MODEL, DATA, **options)
    assert isinstance(err.value, OptionError) and isinstance(err.value, ConfigError)
    assert str(err.value).startswith("scan(): ") and needle in str(err.value)


def test_option_forms_parse_as_the_cli_does():
    from fimaudit import _config

    a = _config(ScanConfig, "scan", MODEL, DATA, {"scale": "1/255", "mean": 0.286, "std": "0.353",
                                                  "input_range": "0,1", "input_shape": "1,28,28"})
    b = _config(ScanConfig, "scan", str(MODEL), str(DATA), {"scale": 1 / 255, "mean": [0.286], "std": (0.353,),
                                                            "input_range": [0, 1], "input_shape": (1, 28, 28)})
    assert a == b and a.mean == (0.286,) and a.scale == 1 / 255 and a.input_range == (0.0, 1.0)
    c = _config(ScanConfig, "scan", MODEL, DATA, {"mean": "0.485,0.456,0.406", "std": [0.229, 0.224, 0.225]})
    assert c.mean == (0.485, 0.456, 0.406) and c.std == (0.229, 0.224, 0.225)


def test_scan_runs_with_keyword_options():
    res = fimaudit.scan(MODEL, DATA, samples=2, scale="1/255", mean=0.286, std=0.353, budget=200, seed=0)
    assert res.summary.lambda_max.median > 0 and res.config["samples"] == 2
