"""How a library's exception reads inside one of this package's one-line error messages."""

__all__ = ["describe"]

_MAX_CHARS = 300


def describe(exc: BaseException) -> str:
    """``'TypeName: message'`` of ``exc`` on one line (whitespace runs, newlines included,
    become one space), cut at 300 characters: third-party messages (pyarrow, orbax, protobuf,
    zipfile) can span lines or quote a whole file."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= _MAX_CHARS else text[:_MAX_CHARS - 3] + "..."
