"""``python -m segaudit.cli ...``: the ``segaudit`` command."""
import sys

from .app import main

sys.exit(main())
