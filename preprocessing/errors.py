"""The one exception the project raises for bad input files."""


class ImageReadError(ValueError):
    """A file or folder that cannot be read as an image.

    The message is one sentence that names the file and the problem, so a
    command-line script can print it as it is and move on (or stop).
    """

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = str(problem).rstrip(".")
        super().__init__(f"{self.path}: {self.problem}.")
