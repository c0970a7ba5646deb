"""Entry script of the frozen app: the same launcher as the `quanttune` command."""

import multiprocessing
import sys

from desktop.launcher import main

if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main())
