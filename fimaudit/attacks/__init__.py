"""Attacks: black-box (FGSM, BIM, PGD, Square) through the query oracle, white-box (PGD, APGD, minimal-norm) from exact gradients."""

from ..errors import ConfigError
from .base import NORMS, Attack, AttackOutcome, RowRng, margins, project
from .gradient import BIM, FGSM, PGD, GradientAttack
from .square import Square
from .whitebox import APGD, GradientOracle, WhiteBoxAttack, WhiteBoxPGD, minimal_distance, sanity_flags

ATTACKS = {"fgsm": FGSM, "bim": BIM, "pgd": PGD, "square": Square, "pgd-wb": WhiteBoxPGD, "apgd": APGD}
WHITEBOX = ("pgd-wb", "apgd")


def make_attack(name: str, **kw) -> Attack:
    if name not in ATTACKS:
        raise ConfigError(f"--attack must be one of {', '.join(ATTACKS)}, not '{name}'")
    cls = ATTACKS[name]
    if cls is Square:
        kw = {k: v for k, v in kw.items() if k == "channel_axis"}
    elif issubclass(cls, WhiteBoxAttack):
        kw = {k: v for k, v in kw.items() if k in ("steps", "loss", "restarts")}
    else:  # FGSM/BIM/PGD perturb every coordinate alike: no layout
        kw = {k: v for k, v in kw.items() if k in ("steps", "grad")}
    return cls(**kw)


__all__ = ["ATTACKS", "WHITEBOX", "APGD", "WhiteBoxPGD", "WhiteBoxAttack", "GradientOracle", "minimal_distance",
           "sanity_flags", "NORMS", "Attack", "AttackOutcome", "RowRng", "BIM", "FGSM", "PGD", "Square", "GradientAttack",
           "make_attack", "margins", "project"]
