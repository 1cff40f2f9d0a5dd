"""`python -m alexnet_jax ...`: the same as the `alexnet-jax` command."""

import sys

from .cli import entry

sys.exit(entry())
