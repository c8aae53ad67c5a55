import os
import sys

try:
    from harness.cli import main

    code = main()
except KeyboardInterrupt:  # Ctrl-C before a command's own handling (imports, set-up): nothing was measured
    print("\ninterrupted", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # a library interrupted halfway through its import (torch) can abort in a normal interpreter
    # shutdown; nothing is left to clean up, so leave without one
    os._exit(130)
raise SystemExit(code)
