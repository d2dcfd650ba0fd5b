"""``python -m monitor`` is the ``driftwarden`` command."""

import sys

from monitor.cli.main import main

sys.exit(main())
