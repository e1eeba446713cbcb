"""``python -m clipfit``: the same as the ``clipfit`` command."""

import sys

from .cli import main

sys.exit(main())
