"""Untrusted text in human output: every non-printable character shown as an escape."""

from __future__ import annotations

import pytest

from lorascope.textsafe import clean, md_code, md_text


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("model.layers.0.q_proj", "model.layers.0.q_proj"),
        ("naïve 模型 😀", "naïve 模型 😀"),
        ("a\x1b[31mred\x1b[0m", r"a\x1b[31mred\x1b[0m"),
        ("csi\x9b2J", r"csi\x9b2J"),
        ("line\nforged", r"line\nforged"),
        ("tab\tcr\rbell\x07del\x7f", r"tab\tcr\rbell\x07del\x7f"),
        ("lone \udc80 surrogate", r"lone \udc80 surrogate"),
        ("bidi \u202e override", r"bidi \u202e override"),
        ("zero\u200bwidth", r"zero\u200bwidth"),
        ("private \U000f0000", r"private \U000f0000"),
    ],
)
def test_clean(raw, shown):
    assert clean(raw) == shown
    clean(raw).encode("utf-8")  # always encodable


def test_clean_takes_any_object():
    assert clean(3) == "3" and clean(None) == "None"


def test_markdown():
    assert md_text("a|b *c* <script> [x](y) _u_ #h") == r"a\|b \*c\* \<script\> \[x\](y) \_u\_ \#h"
    assert md_code("q_proj") == "`q_proj`"
    assert md_code("a|b`c") == r"``a\|b`c``"
    assert md_code("`x`") == "`` `x` ``"
    assert md_code("\x1b]0;title\x07") == r"`\x1b]0;title\x07`"
