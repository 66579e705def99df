"""`python -m g2p_batch ...` is `g2p-batch ...`."""

import sys

from .cli import app

sys.exit(app(prog_name="g2p-batch"))
