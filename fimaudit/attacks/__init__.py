"""Attacks: black-box (FGSM, BIM, PGD, Square) and decision-based (RayS, HopSkipJump) through the query oracle,
white-box (PGD, APGD, minimal-norm) from exact gradients, transfer (APGD on a surrogate's gradients, judged on the model)."""

from ..errors import ConfigError
from .base import NORMS, Attack, AttackOutcome, RowRng, margins, project
from .decision import HopSkipJump, RayS, rays_search
from .gradient import BIM, FGSM, PGD, GradientAttack
from .square import Square
from .transfer import Transfer
from .whitebox import APGD, GradientOracle, WhiteBoxAttack, WhiteBoxPGD, minimal_distance, sanity_flags

ATTACKS = {"fgsm": FGSM, "bim": BIM, "pgd": PGD, "square": Square, "rays": RayS, "hsja": HopSkipJump,
           "pgd-wb": WhiteBoxPGD, "apgd": APGD, "transfer": Transfer}
WHITEBOX = ("pgd-wb", "apgd")


def make_attack(name: str, **kw) -> Attack:
    if name not in ATTACKS:
        raise ConfigError(f"--attack must be one of {', '.join(ATTACKS)}, not '{name}'")
    cls = ATTACKS[name]
    if cls in (Square, RayS, HopSkipJump):
        kw = {k: v for k, v in kw.items() if k == "channel_axis"}
    elif cls is Transfer:
        kw = {k: v for k, v in kw.items() if k in ("surrogate", "steps", "loss", "restarts")}
    elif issubclass(cls, WhiteBoxAttack):
        kw = {k: v for k, v in kw.items() if k in ("steps", "loss", "restarts")}
    else:  # FGSM/BIM/PGD perturb every coordinate alike: no layout
        kw = {k: v for k, v in kw.items() if k in ("steps", "grad")}
    return cls(**kw)


__all__ = ["ATTACKS", "WHITEBOX", "APGD", "WhiteBoxPGD", "WhiteBoxAttack", "GradientOracle", "minimal_distance",
           "sanity_flags", "NORMS", "Attack", "AttackOutcome", "RowRng", "BIM", "FGSM", "PGD", "Square", "GradientAttack",
           "make_attack", "margins", "project", "RayS", "rays_search", "HopSkipJump", "Transfer"]
