"""The one exception type for mistakes a user can make and fix."""


class LlmclfError(Exception):
    """A problem with the user's input, files or options.

    The message says what is wrong and how to fix it. The CLI prints it as one line and
    exits with status 2; it never shows a traceback for this type.
    """
