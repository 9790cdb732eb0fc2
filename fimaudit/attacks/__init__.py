"""Black-box attacks (FGSM, BIM, PGD, Square) through the query oracle, and robust accuracy / ratio curves."""

from ..errors import ConfigError
from .base import NORMS, Attack, AttackOutcome, margins, project
from .gradient import BIM, FGSM, PGD, GradientAttack
from .square import Square

ATTACKS = {"fgsm": FGSM, "bim": BIM, "pgd": PGD, "square": Square}


def make_attack(name: str, **kw) -> Attack:
    if name not in ATTACKS:
        raise ConfigError(f"--attack must be one of {', '.join(ATTACKS)}, not '{name}'")
    cls = ATTACKS[name]
    if cls is Square:
        kw = {}
    return cls(**kw)


__all__ = ["ATTACKS", "NORMS", "Attack", "AttackOutcome", "BIM", "FGSM", "PGD", "Square", "GradientAttack",
           "make_attack", "margins", "project"]
