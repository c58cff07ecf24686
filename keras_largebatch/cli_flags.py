"""absl flag parsing for the command lines (main, studies.sweep, studies.plot) with a bad flag
as one `error:` line on stderr and exit status 2, like every other bad input:

    app.run(main, flags_parser=cli_flags.parse)
"""

from __future__ import annotations

import sys

from absl import flags


def parse(argv: list[str]) -> list[str]:
    """Parse `argv` into absl's FLAGS; on an unknown or malformed flag print one line, exit 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}; run with --helpshort to list the flags", file=sys.stderr, flush=True)
        sys.exit(2)
