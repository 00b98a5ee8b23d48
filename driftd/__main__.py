"""``python -m driftd``: the ``driftd`` command (:func:`driftd.cli.main`)."""

import sys

from driftd.cli import main

sys.exit(main())
