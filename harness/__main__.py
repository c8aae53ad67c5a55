import sys

try:
    from harness.cli import main

    code = main()
except KeyboardInterrupt:  # Ctrl-C before a command installs its own handling (imports, setup)
    print("\ninterrupted", file=sys.stderr)
    code = 130
raise SystemExit(code)
