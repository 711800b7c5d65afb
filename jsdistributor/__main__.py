"""``python -m jsdistributor``: the ``jsdistributor`` command."""

import sys

from .cli import main

sys.exit(main())
