"""The `quanttune` entry point: no arguments open the window, a command runs headless.

Headless commands never import Qt; the window's modules are imported only when it opens.
"""

from __future__ import annotations

import sys

from core import cli


def _open_window() -> int:
    from desktop.app import main as app_main

    return app_main()


def main() -> int:
    return cli.main(sys.argv[1:], gui=_open_window)


if __name__ == "__main__":
    sys.exit(main())
