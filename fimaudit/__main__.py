"""``python -m fimaudit``."""

from .cli import main

main()
