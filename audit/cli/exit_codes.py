"""Exit codes of every ``xray-audit`` command."""

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2
