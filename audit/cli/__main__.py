"""``python -m audit.cli``: the ``xray-audit`` command (e.g. under ``accelerate launch -m``)."""

import sys

from audit.cli import main

sys.exit(main())
