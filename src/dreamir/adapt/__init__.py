"""`dreamir adapt`, a package: its stages are split into modules in the next change."""

from dreamir.adapt.pipeline import (
    TIE_BREAKER,
    VALIDATION_METRIC,
    AdaptArguments,
    DenseCandidateRefresher,
    PseudoGoldValidator,
    adapt,
    build_examples,
    build_trainer,
    prepare_examples,
    read_derived,
    render_report,
    select_heads_label_free,
    source_passage,
    split_by_source,
)

__all__ = [
    "TIE_BREAKER",
    "VALIDATION_METRIC",
    "AdaptArguments",
    "DenseCandidateRefresher",
    "PseudoGoldValidator",
    "adapt",
    "build_examples",
    "build_trainer",
    "prepare_examples",
    "read_derived",
    "render_report",
    "select_heads_label_free",
    "source_passage",
    "split_by_source",
]
