"""`python -m engine` is the `adbatch` command."""

import sys

from engine.cli.main import main

sys.exit(main())
