"""The exceptions the project raises for problems a user must fix.

Every user-facing input problem (an image, a manifest, a CSV, an encoder file, an
option) is an `InputError`, whose message is one sentence naming the thing and the
problem; `plumbing.cli.run_command` prints it as one `error: ...` line and
exits with code 1, or 2 for a `UsageError` (a bad option, as argparse does).
"""


class InputError(ValueError):
    """A file, folder or setting that cannot be used as given.

    Args:
        subject: str or Path. What is wrong (a file, a folder, an option such as `--folds`).
        problem: str. What is wrong with it, without a final full stop.
    """

    exit_code = 1

    def __init__(self, subject, problem):
        self.path = str(subject)
        self.problem = str(problem).rstrip(".")
        super().__init__(f"{self.path}: {self.problem}.")


class ImageReadError(InputError):
    """A file or folder that cannot be read as an image."""


class UsageError(InputError):
    """Options that do not fit together or are out of range; exit code 2, as argparse uses."""

    exit_code = 2
