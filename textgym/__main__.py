"""``python -m textgym`` = the ``textgym`` command (also under torchrun / accelerate launch)."""

import sys

from textgym.cli import main

sys.exit(main())
