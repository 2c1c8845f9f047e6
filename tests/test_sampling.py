"""Each step's examples are a pure function of (seed, step, process rank, number of processes)."""

import pytest

from dreamir.data.sampling import SamplingArguments, step_instances
from dreamir.options import OptionError
from tests.test_dream_objective import CORPUS, EXAMPLES

SAMPLING = SamplingArguments(num_candidates=3)


def _queries(step: int, per_process: int, rank: int = 0, processes: int = 1, seed: int = 0) -> list[str]:
    instances = step_instances(
        EXAMPLES,
        CORPUS,
        SAMPLING,
        seed=seed,
        step=step,
        per_process=per_process,
        rank=rank,
        processes=processes,
    )
    return [i.query for i in instances]


def test_the_same_arguments_give_the_same_instances():
    first = step_instances(EXAMPLES, CORPUS, SAMPLING, seed=3, step=5, per_process=4)
    again = step_instances(EXAMPLES, CORPUS, SAMPLING, seed=3, step=5, per_process=4)
    assert first == again
    assert _queries(5, 4, seed=3) != _queries(5, 4, seed=4) or _queries(6, 4, seed=3) != _queries(
        6, 4, seed=4
    )


@pytest.mark.parametrize("processes", [2, 3])
def test_processes_share_out_exactly_what_one_process_with_their_whole_batch_reads(processes):
    for step in range(4):
        shares = [_queries(step, 2, rank, processes) for rank in range(processes)]
        assert [q for share in shares for q in share] == _queries(step, 2 * processes)


def test_every_example_is_read_once_per_epoch():
    stream = [q for step in range(3) for q in _queries(step, 1)]
    assert sorted(stream) == sorted(e.query for e in EXAMPLES)


def test_candidates_are_the_first_k_shuffled_per_example_and_the_gold_is_found():
    for instance in step_instances(EXAMPLES, CORPUS, SAMPLING, seed=0, step=0, per_process=3):
        example = next(e for e in EXAMPLES if e.query == instance.query)
        assert sorted(d.doc_id for d in instance.documents) == sorted(example.candidate_ids[:3])
        assert instance.documents[instance.gold_index].doc_id == example.gold_id
    unshuffled = SamplingArguments(num_candidates=3, shuffle_candidates=False)
    for instance in step_instances(EXAMPLES, CORPUS, unshuffled, seed=0, step=0, per_process=3):
        example = next(e for e in EXAMPLES if e.query == instance.query)
        assert [d.doc_id for d in instance.documents] == example.candidate_ids[:3]


def test_a_candidate_count_below_one_is_refused_by_name():
    with pytest.raises(OptionError, match="--num-candidates must be >= 1"):
        SamplingArguments(num_candidates=0)
