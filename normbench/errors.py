"""The one exception type normbench raises for problems a user can fix."""

# Exit codes, shared by the CLI and the sweep runner.
EXIT_OK = 0
EXIT_ERROR = 1  # a run failed, data missing, I/O problem
EXIT_USAGE = 2  # bad config, bad option
EXIT_DIVERGED = 3  # NaN/Inf loss
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class NormbenchError(Exception):
    """A problem the user can fix; the CLI prints it as one red line and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class ConfigError(NormbenchError):
    """An invalid config file, key or value (exit code 2)."""

    def __init__(self, message: str):
        super().__init__(message, EXIT_USAGE)
