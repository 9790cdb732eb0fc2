"""Operators fimaudit knows only to skip: constants, index and random outputs carry no derivative."""

from __future__ import annotations

from .registry import Op, Reason, register

_INDEX = "an index output: integer values"
_RANDOM = "a random draw: no derivative with respect to the input"

register(
    "other",
    Op("Constant", nondiff="a constant", vjp=Reason("a constant"), jvp=Reason("a constant"),
       note="folded while parsing (fimaudit.graph.parse)"),
    *(Op(name, nondiff=_INDEX, vjp=Reason(_INDEX), jvp=Reason(_INDEX),
         piecewise="index" if name in ("ArgMax", "ArgMin", "OneHot") else "")
      for name in ("ArgMax", "ArgMin", "NonZero", "OneHot", "EyeLike")),
    *(Op(name, nondiff=_RANDOM, vjp=Reason(_RANDOM), jvp=Reason(_RANDOM))
      for name in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial")),
)
