"""``python -m slicer_cli [--list_cli | <CLI> ...]``: slicer_cli_web's entry point convention."""
import os
import sys

from slicer_cli_web import ctk_cli_adjustment  # noqa: F401  (relaxed constraints, as DSA)
from slicer_cli_web.cli_list_entrypoint import CLIListEntrypoint


def main() -> int:
    """Dispatch to the CLI named on the command line (or print the CLI list)."""
    return CLIListEntrypoint(cwd=os.path.dirname(os.path.realpath(__file__)))


if __name__ == "__main__":
    sys.exit(main())
