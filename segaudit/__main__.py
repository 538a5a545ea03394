"""``python -m segaudit ...``: the ``segaudit`` command."""
import sys

from .cli import main

sys.exit(main())
