"""``python -m monitor`` is the ``driftwarden`` command."""

import sys

from monitor.cli import main

sys.exit(main())
