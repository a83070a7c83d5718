"""One exception type for bad user input; the CLI prints its message on one line and exits with code 2."""


class SkillMixError(ValueError):
    """Bad input (file, field, option or value) with a one-line message saying what was expected."""
