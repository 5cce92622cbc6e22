"""``python -m overtrain`` (and ``torchrun -m overtrain``) is the ``overtrain`` command."""

import sys

from overtrain.cli import main

sys.exit(main())
