"""Incremental answer text: what streams out joins to the full decode, and nothing is taken back."""

import pytest


@pytest.fixture(scope="module")
def tokenizer(tiny_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_folder)


TEXTS = [
    " A red square, a blue circle and a green triangle.",
    " Café crème — naïve façade, 東京 and 🙂 emoji split over byte tokens.",
    "  leading spaces\nand\ttabs\n\nand blank lines  ",
]


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_pieces_join_to_the_full_decode(tokenizer, text):
    from dsvl_cli.engine.detokenize import AnswerText, decode_answer

    ids = tokenizer.encode(text, add_special_tokens=False)
    stream = AnswerText(tokenizer)
    pieces = [stream.add([i]) for i in ids]
    answer, stopped, rest = stream.finish()
    assert answer == decode_answer(tokenizer, ids) == text.lstrip()
    assert "".join(pieces) + rest == answer and not stopped
    assert not any("\ufffd" in p for p in pieces)  # a half character is never shown
    assert sum(1 for p in pieces if p) > len(ids) // 3  # it really streams, not all at the end


def test_stop_string_is_held_back_and_cut(tokenizer):
    from dsvl_cli.engine.detokenize import AnswerText

    ids = tokenizer.encode(" one two STOP three", add_special_tokens=False)
    stream = AnswerText(tokenizer, stops=("STOP",))
    shown = "".join(stream.add([i]) for i in ids)
    answer, stopped, rest = stream.finish()
    assert (answer, stopped) == ("one two ", True)
    assert "S" not in shown and shown + rest == answer
