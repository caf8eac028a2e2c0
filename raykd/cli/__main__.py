"""``python -m raykd.cli``: the same as the ``raykd`` console script."""

import sys

from raykd.cli import main

sys.exit(main())
