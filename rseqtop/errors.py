"""Errors meant for the user: printed as one line, never as a traceback."""


class UserError(Exception):
    """A mistake or missing prerequisite the user can fix; the message says how."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(UserError):
    def __init__(self, message: str):
        super().__init__(message, exit_code=2)
