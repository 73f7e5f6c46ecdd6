"""``python -m edgeship.cli ARGS`` = ``edgeship ARGS``."""

import sys

from .app import main

sys.exit(main())
