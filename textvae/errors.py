"""The one exception type the command line turns into a single error line."""


class TextVAEError(Exception):
    """A problem with the user's input (files, config, names, text).

    The CLI prints ``textvae: error: <message>`` and exits non-zero; the
    message must say what is wrong and, where it helps, what would be right.
    """
