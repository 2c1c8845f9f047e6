"""Cleaning Factbook text: HTML to plain text, and short answers cut from a field's lead paragraph."""

from __future__ import annotations

import html
import re

MAX_ANSWER_WORDS = 12
# Answers that say "no data" rather than answering.
NON_ANSWERS = {"", "none", "na", "n/a", "nan", "unknown", "not available", "not applicable"}

PARAGRAPH_BREAKS = re.compile(r"(?:\s*<br\s*/?>\s*)+|</p>\s*<p>", re.IGNORECASE)
_TAGS = re.compile(r"<[^>]+>")
_LEADING_LABEL = re.compile(r"^\s*<(strong|b|em)>[^<]{0,80}:\s*</\1>\s*", re.IGNORECASE)
_PARENS = re.compile(r"\s*\([^()]*\)")
_PERCENT = re.compile(r"\s*[<>]?-?\d[\d.,]*\s*%")
_SHOUTED = re.compile(r"\b[A-Z][A-Z'’]+\b")
_ROMAN = re.compile(r"^M{0,3}(?:CM|CD|D?C{0,3})(?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3})$")


def clean_html(raw: str) -> str:
    """Factbook HTML to plain text: line breaks become "; ", tags go, entities are decoded."""
    text = PARAGRAPH_BREAKS.sub("; ", raw)
    text = html.unescape(_TAGS.sub("", text))
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"^(?:;\s*)+|(?:\s*;)+$", "", text).strip()


def first_paragraph(raw: str) -> str:
    # Answers come from the lead paragraph; a leading "<strong>metropolitan France:</strong>" is a
    # qualifier, not part of the answer.
    lead = next((part for part in PARAGRAPH_BREAKS.split(raw) if _TAGS.sub("", part).strip()), "")
    return clean_html(_LEADING_LABEL.sub("", lead))


def strip_parens(text: str) -> str:
    previous = None
    while previous != text:  # repeat so nested parentheses go too
        previous, text = text, _PARENS.sub("", text)
    return text.strip()


def strip_percentages(text: str) -> str:
    return _PERCENT.sub("", text).strip()


def split_top_level(text: str, separators: str) -> list[str]:
    """Split on separators outside parentheses; a comma inside a number ("1,402") is no separator."""
    parts, depth, current = [], 0, []
    for position, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        in_number = (
            char == ","
            and 0 < position < len(text) - 1
            and text[position - 1].isdigit()
            and text[position + 1].isdigit()
        )
        if char in separators and depth <= 0 and not in_number:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return [part for part in parts if part]


def first_clause(text: str) -> str:
    clauses = split_top_level(text, ";")
    if not clauses:
        return ""
    # "varies; equatorial in south, ..." - a one-word lead clause says too little on its own.
    if len(clauses[0].split()) == 1 and len(clauses) > 1:
        return f"{clauses[0]}; {clauses[1]}"
    return clauses[0]


def first_items(text: str, count: int) -> str:
    return ", ".join(split_top_level(text, ",;")[:count])


def untitle_shouting(text: str) -> str:
    """The Factbook writes surnames and some cities in capitals ("Emmanuel MACRON"); title-case them."""

    def fix(match: re.Match[str]) -> str:
        word = match.group(0)
        return word if _ROMAN.match(word) else word.capitalize()

    return _SHOUTED.sub(fix, text)


def finish_answer(text: str | None) -> str | None:
    """Normalise an extracted answer; None when empty, a non-answer or over MAX_ANSWER_WORDS."""
    if text is None:
        return None
    text = re.sub(r"\s+", " ", text)
    previous = None
    while previous != text:  # quotes and trailing punctuation can wrap each other: '"Paris".'
        previous = text
        text = text.strip().strip("\"'“”‘’").rstrip(" .;:,-–")
    if text.lower() in NON_ANSWERS or len(text.split()) > MAX_ANSWER_WORDS:
        return None
    return text
