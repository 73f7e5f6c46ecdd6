"""``python -m edgeship ARGS`` = ``edgeship ARGS``."""

import sys

from .cli import main

sys.exit(main())
