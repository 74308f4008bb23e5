"""OpenAI's wire format, below engine and serve: `messages` (bodies <-> dsvl's types, no pydantic)
and `protocol` (the pydantic request models, imported by name where needed, not from here)."""

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
