"""``python -m lbnl.cli``: the command line (same as ``python -m lbnl`` and ``lbnl``)."""

import sys

from . import main

sys.exit(main())
