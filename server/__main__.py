"""`python -m server [options]`: run the control plane until SIGTERM/SIGINT."""

import sys

from server.app import main

sys.exit(main())
