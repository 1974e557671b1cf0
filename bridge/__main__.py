"""``python -m kernelpit``: the ``kernelpit`` command."""

import sys

from .cli import main

sys.exit(main())
