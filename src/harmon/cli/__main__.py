"""``python -m harmon.cli ...`` (and ``torchrun -m harmon.cli train ...``): the ``harmon`` command."""

import sys

from harmon.cli import main

sys.exit(main())
