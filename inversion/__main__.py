"""``python -m inversion`` is the ``tanhui`` command."""

import sys

from .cli import main

sys.exit(main())
