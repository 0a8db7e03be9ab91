# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The exit statuses of mseg-cli (said in ``mseg-cli --help`` and docs/cli.md) and its one error type."""

OK = 0
FAILED = 1        # the run failed on hosts (a task failed, a host was unreachable, a rollout batch was rolled back)
BAD_INPUT = 2     # usage or bad input: nothing was changed (no host touched, the inventory as it was)
DENIED = 3        # trace: at least one traced flow is dropped (as the host CLI's trace)
INTERRUPTED = 130

EXIT_STATUSES = (
    (OK, "success"),
    (FAILED, "the run failed on hosts (failed or unreachable, a rollout batch rolled back)"),
    (BAD_INPUT, "usage or bad input (unknown host, invalid policy or inventory): nothing was changed"),
    (DENIED, "trace: a traced flow is dropped"),
    (INTERRUPTED, "interrupted (Ctrl-C): the inventory is as it was; hosts may be part way, re-run the verb"),
)


class CliError(Exception):
    """One clear message (what, where, how to fix) and the exit status it ends with."""

    def __init__(self, message, status=BAD_INPUT):
        super().__init__(message)
        self.status = status
