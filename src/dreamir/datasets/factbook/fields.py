"""The curated Factbook fields: how each becomes a passage, and its templated questions with the answer
extractor that cuts a short answer from the field."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dreamir.datasets.factbook.cleaning import (
    PARAGRAPH_BREAKS,
    clean_html,
    first_clause,
    first_items,
    first_paragraph,
    split_top_level,
    strip_parens,
    strip_percentages,
    untitle_shouting,
)

FieldValue = dict[str, Any]
AnswerExtractor = Callable[[FieldValue], str | None]


# ---------------------------------------------------------------- reading field values


def subfield_raw(value: FieldValue, name: str) -> str | None:
    # Keys carry stray spaces in the data ("total "): match them stripped and case-insensitively.
    for key, sub in value.items():
        if key.strip().lower() == name.lower() and isinstance(sub, dict):
            text = sub.get("text")
            return text if isinstance(text, str) else None
    return None


def _main(value: FieldValue) -> str | None:
    text = value.get("text")
    return first_paragraph(text) if isinstance(text, str) else None


def _sub(value: FieldValue, name: str) -> str | None:
    raw = subfield_raw(value, name)
    return first_paragraph(raw) if raw is not None else None


def _first_subfield_starting(value: FieldValue, prefix: str) -> str | None:
    # Year-keyed series ("Real GDP per capita 2024", ...) list the newest first.
    for key, sub in value.items():
        if key.strip().lower().startswith(prefix.lower()) and isinstance(sub, dict):
            text = sub.get("text")
            if isinstance(text, str):
                return first_paragraph(text)
    return None


def _apply(text: str | None, *steps: Callable[[str], str]) -> str | None:
    if text is None:
        return None
    for step in steps:
        text = step(text)
    return text


# ---------------------------------------------------------------- answer extractors


def _main_clause(value: FieldValue) -> str | None:
    return _apply(_main(value), strip_parens, first_clause)


def _main_items(count: int) -> AnswerExtractor:
    def extract(value: FieldValue) -> str | None:
        return _apply(_main(value), strip_parens, strip_percentages, lambda t: first_items(t, count))

    return extract


def _sub_clause(name: str) -> AnswerExtractor:
    def extract(value: FieldValue) -> str | None:
        return _apply(_sub(value, name), strip_parens, first_clause)

    return extract


def _sub_person(name: str) -> AnswerExtractor:
    def extract(value: FieldValue) -> str | None:
        return _apply(_sub(value, name), strip_parens, first_clause, untitle_shouting)

    return extract


def _location_region(value: FieldValue) -> str | None:
    return _apply(_main(value), strip_parens, lambda t: first_items(t, 1))


def _border_countries(value: FieldValue) -> str | None:
    raw = _sub(value, "border countries")
    if raw is None:
        return None
    items = split_top_level(strip_parens(raw), ";")
    names = [re.sub(r"\s+[\d.,]+\s*km.*$", "", item) for item in items]
    return ", ".join(name for name in names if name)


def _list_with_official(value: FieldValue) -> str | None:
    raw = _main(value) or _sub(value, "Languages")
    return _apply(raw, strip_parens, strip_percentages, lambda t: first_items(t, 3))


def _official_language(value: FieldValue) -> str | None:
    raw = _main(value) or _sub(value, "Languages")
    if raw is None:
        return None
    for item in split_top_level(raw, ",;"):
        if "official" in item.lower():
            return strip_percentages(strip_parens(item))
    return None


def _largest_urban_area(value: FieldValue) -> str | None:
    first = _apply(_main(value), strip_parens, lambda t: first_items(t, 1))
    if first is None:
        return None
    # "15.946 million Lagos" -> "Lagos"
    city = re.sub(r"^[\d.,]+\s*(?:million|thousand)?\s*", "", first)
    return untitle_shouting(city)


def _time_zone(value: FieldValue) -> str | None:
    return _apply(_sub(value, "time difference"), strip_parens, first_clause)


def _independence_date(value: FieldValue) -> str | None:
    text = _main(value)
    if text is None:
        return None
    lead = first_clause(strip_parens(text))
    # Keep only dates: "oldest independent country in Africa ..." is not a date.
    return lead if re.search(r"\b\d{3,4}\b", lead) else None


def _independence_from(value: FieldValue) -> str | None:
    text = _main(value)
    match = re.search(r"\(from (?:the )?([^()]*)\)", text or "")
    return match.group(1) if match else None


def _holiday_name(value: FieldValue) -> str | None:
    return _apply(_main(value), strip_parens, lambda t: first_items(t, 1))


def _holiday_date(value: FieldValue) -> str | None:
    text = _apply(_main(value), strip_parens)
    months = "January|February|March|April|May|June|July|August|September|October|November|December"
    match = re.search(rf"\b\d{{1,2}} (?:{months})\b", text or "")
    return match.group(0) if match else None


def _anthem_title(value: FieldValue) -> str | None:
    return _apply(_sub(value, "title"), strip_parens, first_clause)


def _anthem_authors(value: FieldValue) -> str | None:
    return _apply(_sub(value, "lyrics/music"), strip_parens, first_clause, untitle_shouting)


def _flag_description(value: FieldValue) -> str | None:
    raw = value.get("text")
    if not isinstance(raw, str):
        return None
    # The description is the paragraph labelled "description:" (others: meaning, history).
    for paragraph in PARAGRAPH_BREAKS.split(raw):
        cleaned = clean_html(paragraph)
        if cleaned.lower().startswith("description:"):
            return first_clause(strip_parens(cleaned[len("description:") :]))
    return _main_clause(value)


def _currency(value: FieldValue) -> str | None:
    text = _sub(value, "Currency")
    if text is None:
        return None
    # "Philippine pesos (PHP) per US dollar -": keep the ISO code, drop the quoting convention.
    return re.split(r"\s+per\s+", text, maxsplit=1)[0]


def _exchange_rate(value: FieldValue) -> str | None:
    return _apply(_first_subfield_starting(value, "Exchange rates"), strip_parens)


def _year_series(prefix: str) -> AnswerExtractor:
    def extract(value: FieldValue) -> str | None:
        return _apply(_first_subfield_starting(value, prefix), strip_parens)

    return extract


def _top_partner(value: FieldValue) -> str | None:
    return _apply(_main(value), strip_parens, strip_percentages, lambda t: first_items(t, 1))


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
    questions: tuple[Question, ...]
    # The Factbook's own name of the field, where it is not the label.
    factbook_name: str | None = None
    # Subfields left out of the passage (they get their own passage elsewhere).
    skip_subfields: tuple[str, ...] = ()
    # When set, the passage holds only these subfields.
    only_subfields: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        """The field's name in the Factbook's section."""
        return self.factbook_name or self.label


_TIME_SUBFIELDS = ("time difference", "daylight saving time", "time zone note")

FIELDS: tuple[FieldSpec, ...] = (
    # Geography
    FieldSpec(
        "location",
        "Location",
        "Geography",
        (
            Question("In which part of the world is {country} located?", _location_region),
            Question("Where is {country} located?", _main_clause),
        ),
    ),
    FieldSpec(
        "area",
        "Area",
        "Geography",
        (
            Question("What is the total area of {country}?", _sub_clause("total")),
            Question("How many square kilometers of land does {country} cover?", _sub_clause("land")),
        ),
    ),
    FieldSpec(
        "land_boundaries",
        "Land boundaries",
        "Geography",
        (
            Question("What is the total length of the land borders of {country}?", _sub_clause("total")),
            Question("Which countries share a border with {country}?", _border_countries),
        ),
    ),
    FieldSpec(
        "coastline",
        "Coastline",
        "Geography",
        (
            Question("How long is the coastline of {country}?", _main_clause),
            Question("What is the length of {country}'s coast?", _main_clause),
        ),
    ),
    FieldSpec(
        "climate",
        "Climate",
        "Geography",
        (
            Question("What is the climate like in {country}?", _main_clause),
            Question("How would you describe the climate of {country}?", _main_clause),
        ),
    ),
    FieldSpec(
        "terrain",
        "Terrain",
        "Geography",
        (
            Question("What is the terrain of {country} like?", _main_clause),
            Question("Describe the landscape of {country}.", _main_clause),
        ),
    ),
    FieldSpec(
        "elevation",
        "Elevation",
        "Geography",
        (
            Question("What is the highest point in {country}?", _sub_clause("highest point")),
            Question("What is the lowest point in {country}?", _sub_clause("lowest point")),
            Question("What is the mean elevation of {country}?", _sub_clause("mean elevation")),
        ),
    ),
    FieldSpec(
        "natural_resources",
        "Natural resources",
        "Geography",
        (
            Question("What natural resources does {country} have?", _main_items(3)),
            Question("Which raw materials are found in {country}?", _main_items(3)),
        ),
    ),
    FieldSpec(
        "natural_hazards",
        "Natural hazards",
        "Geography",
        (
            Question("What natural hazards affect {country}?", _main_clause),
            Question("Which natural disasters threaten {country}?", _main_clause),
        ),
    ),
    # People and Society
    FieldSpec(
        "population",
        "Population",
        "People and Society",
        (
            Question("What is the population of {country}?", _sub_clause("total")),
            Question("How many people live in {country}?", _sub_clause("total")),
        ),
    ),
    FieldSpec(
        "nationality",
        "Nationality",
        "People and Society",
        (
            Question("What adjective describes people or things from {country}?", _sub_clause("adjective")),
            Question("What is a citizen of {country} called?", _sub_clause("noun")),
        ),
    ),
    FieldSpec(
        "ethnic_groups",
        "Ethnic groups",
        "People and Society",
        (
            Question("What is the largest ethnic group in {country}?", _main_items(1)),
            Question("What are the main ethnic groups of {country}?", _main_items(3)),
        ),
    ),
    FieldSpec(
        "languages",
        "Languages",
        "People and Society",
        (
            Question("What languages are spoken in {country}?", _list_with_official),
            Question("What is the official language of {country}?", _official_language),
        ),
        skip_subfields=("major-language sample(s)",),
    ),
    FieldSpec(
        "religions",
        "Religions",
        "People and Society",
        (
            Question("What is the main religion in {country}?", _main_items(1)),
            Question("Which religions are practiced in {country}?", _main_items(3)),
        ),
    ),
    FieldSpec(
        "median_age",
        "Median age",
        "People and Society",
        (
            Question("What is the median age in {country}?", _sub_clause("total")),
            Question("How old is the median person in {country}?", _sub_clause("total")),
        ),
    ),
    FieldSpec(
        "life_expectancy",
        "Life expectancy at birth",
        "People and Society",
        (
            Question("What is the life expectancy at birth in {country}?", _sub_clause("total population")),
            Question("How long do people in {country} live on average?", _sub_clause("total population")),
        ),
    ),
    FieldSpec(
        "major_urban_areas",
        "Major urban areas",
        "People and Society",
        (
            Question("What is the largest city in {country}?", _largest_urban_area),
            Question("Which urban area of {country} has the most people?", _largest_urban_area),
        ),
        factbook_name="Major urban areas - population",
    ),
    # Government
    FieldSpec(
        "country_name",
        "Country name",
        "Government",
        (
            Question(
                "What is the official long-form name of {country}?", _sub_clause("conventional long form")
            ),
            Question("What do locals call {country} in their own language?", _sub_clause("local short form")),
        ),
    ),
    FieldSpec(
        "government_type",
        "Government type",
        "Government",
        (
            Question("What type of government does {country} have?", _main_clause),
            Question("What is the form of government in {country}?", _main_clause),
        ),
    ),
    FieldSpec(
        "capital",
        "Capital",
        "Government",
        (
            Question("What is the capital of {country}?", _sub_clause("name")),
            Question("Which city serves as the seat of government in {country}?", _sub_clause("name")),
        ),
        skip_subfields=_TIME_SUBFIELDS,
    ),
    FieldSpec(
        "time_difference",
        "Time difference",
        "Government",
        (
            Question("What time zone is the capital of {country} in?", _time_zone),
            Question("What is the time difference between {country} and UTC?", _time_zone),
        ),
        factbook_name="Capital",
        only_subfields=_TIME_SUBFIELDS,
    ),
    FieldSpec(
        "legal_system",
        "Legal system",
        "Government",
        (
            Question("What legal system does {country} use?", _main_clause),
            Question("On what kind of law is the legal system of {country} based?", _main_clause),
        ),
    ),
    FieldSpec(
        "independence",
        "Independence",
        "Government",
        (
            Question("When did {country} become independent?", _independence_date),
            Question("From which country did {country} gain independence?", _independence_from),
        ),
    ),
    FieldSpec(
        "national_holiday",
        "National holiday",
        "Government",
        (
            Question("What is the national holiday of {country}?", _holiday_name),
            Question("On what date is the national day of {country} celebrated?", _holiday_date),
        ),
    ),
    FieldSpec(
        "executive_branch",
        "Executive branch",
        "Government",
        (
            Question("Who is the chief of state of {country}?", _sub_person("chief of state")),
            Question("Who is the head of government of {country}?", _sub_person("head of government")),
        ),
    ),
    FieldSpec(
        "legislative_branch",
        "Legislative branch",
        "Government",
        (
            Question("What is the name of the legislature of {country}?", _sub_clause("legislature name")),
            Question(
                "Is the parliament of {country} unicameral or bicameral?",
                _sub_clause("legislative structure"),
            ),
        ),
    ),
    FieldSpec(
        "judicial_branch",
        "Judicial branch",
        "Government",
        (Question("What is the highest court of {country}?", _sub_clause("highest court(s)")),),
    ),
    FieldSpec(
        "suffrage",
        "Suffrage",
        "Government",
        (
            Question("At what age can people vote in {country}?", _main_clause),
            Question("What is the voting age in {country}?", _main_clause),
        ),
    ),
    FieldSpec(
        "flag",
        "Flag",
        "Government",
        (
            Question("What does the flag of {country} look like?", _flag_description),
            Question("Describe the national flag of {country}.", _flag_description),
        ),
    ),
    FieldSpec(
        "national_symbols",
        "National symbols",
        "Government",
        (
            Question("What are the national symbols of {country}?", _main_items(3)),
            Question("Which emblem represents {country}?", _main_items(1)),
        ),
        factbook_name="National symbol(s)",
    ),
    FieldSpec(
        "national_colors",
        "National colors",
        "Government",
        (
            Question("What are the national colors of {country}?", _main_clause),
            Question("Which colors represent {country}?", _main_clause),
        ),
        factbook_name="National color(s)",
    ),
    FieldSpec(
        "national_anthem",
        "National anthem",
        "Government",
        (
            Question("What is the title of the national anthem of {country}?", _anthem_title),
            Question("Who wrote the lyrics and music of the national anthem of {country}?", _anthem_authors),
        ),
        factbook_name="National anthem(s)",
    ),
    # Economy
    FieldSpec(
        "currency",
        "Currency and exchange rates",
        "Economy",
        (
            Question("What currency is used in {country}?", _currency),
            Question("What is the exchange rate of the currency of {country} per US dollar?", _exchange_rate),
        ),
        factbook_name="Exchange rates",
    ),
    FieldSpec(
        "gdp",
        "GDP (official exchange rate)",
        "Economy",
        (
            Question("What is the GDP of {country} at the official exchange rate?", _main_clause),
            Question("How large is the economy of {country} in US dollars?", _main_clause),
        ),
    ),
    FieldSpec(
        "gdp_per_capita",
        "Real GDP per capita",
        "Economy",
        (
            Question("What is the real GDP per capita of {country}?", _year_series("Real GDP per capita")),
            Question("How much is the GDP per person in {country}?", _year_series("Real GDP per capita")),
        ),
    ),
    FieldSpec(
        "agricultural_products",
        "Agricultural products",
        "Economy",
        (
            Question("What are the main agricultural products of {country}?", _main_items(3)),
            Question("What crops and livestock does {country} produce most?", _main_items(3)),
        ),
    ),
    FieldSpec(
        "industries",
        "Industries",
        "Economy",
        (
            Question("What are the main industries of {country}?", _main_items(3)),
            Question("Which industries drive the economy of {country}?", _main_items(3)),
        ),
    ),
    FieldSpec(
        "export_partners",
        "Exports - partners",
        "Economy",
        (
            Question("Which country is the top export partner of {country}?", _top_partner),
            Question("To which countries does {country} export the most?", _main_items(3)),
        ),
    ),
    FieldSpec(
        "export_commodities",
        "Exports - commodities",
        "Economy",
        (
            Question("What are the main exports of {country}?", _main_items(3)),
            Question("What goods does {country} sell abroad the most?", _main_items(3)),
        ),
    ),
    FieldSpec(
        "import_partners",
        "Imports - partners",
        "Economy",
        (
            Question("Which country does {country} import the most from?", _top_partner),
            Question("Who are the main import partners of {country}?", _main_items(3)),
        ),
    ),
    # Communications, transport, environment
    FieldSpec(
        "internet_code",
        "Internet country code",
        "Communications",
        (
            Question("What is the internet country code of {country}?", _internet_code),
            Question("Which top-level domain do websites from {country} use?", _internet_code),
        ),
    ),
    FieldSpec(
        "airports",
        "Airports",
        "Transportation",
        (
            Question("How many airports does {country} have?", _main_clause),
            Question("What is the number of airports in {country}?", _main_clause),
        ),
    ),
    FieldSpec(
        "environmental_issues",
        "Environmental issues",
        "Environment",
        (
            Question("What are the main environmental issues in {country}?", _main_items(2)),
            Question("What environmental problems does {country} face?", _main_items(2)),
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
