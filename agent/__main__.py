"""`python -m agent` runs the device daemon."""

import sys

from agent.main import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
