"""`python -m robustact ...` (and `torchrun ... -m robustact ...`) is the `robustact` command."""

import sys

from robustact.cli import main

sys.exit(main())
