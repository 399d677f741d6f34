"""The one exception type for problems the user can fix (bad input, bad settings)."""


class UserError(Exception):
    """A problem with the user's input; the CLI prints each line of it, no traceback."""

    def __init__(self, problems):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
