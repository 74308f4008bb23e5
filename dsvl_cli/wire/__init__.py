"""OpenAI's wire format, below engine and serve, one module per part: `messages` (bodies <-> dsvl's
types, no pydantic), `protocol` (the pydantic request models and the body parser), `chunks` (the
answers: sent by serve, read by the --server client), `errors` (DsvlError <-> OpenAI's error).
Only `messages` is re-exported here: the others are imported by name where needed (pydantic and
the server's shapes stay out of a plain `import dsvl_cli.wire`)."""

from dsvl_cli.wire.messages import (
    ANSWER_FORMAT_FIELDS,
    IMAGE_URL,
    LOGPROB_FIELDS,
    MAX_CHOICES,
    MAX_LABEL_CHARS,
    SAMPLING_FIELDS,
    answer_format,
    answer_format_fields,
    file_source,
    logprob_changes,
    logprob_fields,
    sampling_fields,
    settings_changes,
    split_content,
    to_messages,
)

__all__ = [
    "ANSWER_FORMAT_FIELDS", "IMAGE_URL", "LOGPROB_FIELDS", "MAX_CHOICES", "MAX_LABEL_CHARS", "SAMPLING_FIELDS",
    "answer_format", "answer_format_fields", "file_source", "logprob_changes", "logprob_fields",
    "sampling_fields", "settings_changes", "split_content", "to_messages",
]
