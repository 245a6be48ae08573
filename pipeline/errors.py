"""The error tree: the type of an error says what happens next.

``PermanentError`` fails the document at once with the message as the
user-visible reason; ``RetryableError`` is retried with backoff until the
attempt limit, then fails the document with its last message.
"""

from __future__ import annotations


class DocpipeError(Exception):
    """Base of every error docpipe raises on purpose."""


class PermanentError(DocpipeError):
    """Retrying cannot help: the input itself is bad."""


class UnsupportedType(PermanentError):
    """The document's media type has no parser."""


class EncryptedDocument(PermanentError):
    """The document needs a password."""


class CorruptDocument(PermanentError):
    """The document cannot be opened or read."""


class EmptyDocument(PermanentError):
    """The document has no pages or no bytes."""


class TooLarge(PermanentError):
    """The document exceeds a configured size or page limit."""


class ParserCrashed(PermanentError):
    """The sandboxed parser died (signal, out of memory) or timed out."""


class RetryableError(DocpipeError):
    """A transient failure: broker or database lost, CUDA OOM after splitting."""


class ConfigError(DocpipeError):
    """Bad settings or a stack that cannot be found; shown to the user as is."""
