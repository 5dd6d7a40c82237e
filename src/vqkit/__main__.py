"""``python -m vqkit`` (and ``torchrun -m vqkit``) runs the command line."""

import sys

from vqkit.entry import main

sys.exit(main())
