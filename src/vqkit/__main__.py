"""``python -m vqkit`` (and ``torchrun -m vqkit``) runs the command line."""

import sys

from vqkit.cli import main

sys.exit(main())
