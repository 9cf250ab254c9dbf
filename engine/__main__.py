"""`python -m engine` is the `adbatch` command."""

import sys

from engine.cli import main

sys.exit(main())
