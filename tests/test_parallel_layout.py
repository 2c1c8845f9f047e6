"""The parallel document layout and the per-corpus document cache, on a tiny random Llama with GQA."""

import dataclasses
import json

import pytest
import torch

from dreamir.cli import main
from dreamir.llm.frozen import FrozenLLM
from dreamir.llm.heads import HeadSet
from dreamir.llm.parallel import ParallelBatch, block_mask
from dreamir.llm.prompt import QUERY_TARGET_INSTRUCTION, PromptSettings
from tests.tiny_models import make_tiny_llama

DOCS = [
    ("france", "paris is the capital city of france"),
    ("germany", "berlin is the capital of germany and a large city"),
    ("italy", "rome"),
    ("spain", "madrid is a city in spain"),
]
PARALLEL = PromptSettings(document_layout="parallel")
HEADS = [(0, 1), (1, 0), (1, 3)]


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return FrozenLLM.from_pretrained(tiny_llama_dir, heads=HEADS, prompt=PARALLEL)


def _batch(llm, order=(0, 1, 2)):
    prompts = [
        llm.encode("what is the capital of france?", [DOCS[i] for i in order], "paris"),
        llm.encode("where is madrid?", DOCS[1:], "in spain, a country"),
    ]
    return llm.collate(prompts)


def _loss_and_grad(llm, batch, reuse_prefix):
    scores = torch.tensor([[0.3, -0.2, 0.5], [1.0, 0.1, -5.0]], requires_grad=True)
    probs = torch.softmax(scores.masked_fill(~batch.candidate_mask, float("-inf")), -1)
    loss = llm.target_loss(batch, probs, reuse_prefix=reuse_prefix)
    loss.backward()
    return loss.detach(), scores.grad


def test_parallel_layout_places_every_candidate_right_after_the_prefix(llm):
    batch = _batch(llm)
    assert isinstance(batch, ParallelBatch)
    start = len(batch.prefix_ids)
    for b in range(2):
        for k in range(3):
            positions = batch.position_ids[b, batch.doc_index[b] == k]
            assert positions[0] == start and torch.equal(
                positions, torch.arange(start, start + len(positions))
            )
        longest = max(len(d) for d in batch.document_ids[b])
        assert batch.position_ids[b, batch.prefix_length] == start + longest
    decoded = llm.tokenizer.decode(batch.document_ids[0][0])
    assert "france" in decoded and "[" not in decoded  # no position-dependent number


def test_block_mask_keeps_candidates_apart(llm):
    batch = _batch(llm)
    allowed = block_mask(batch)[0, 0] == 0  # row 0
    first, second = (batch.doc_index[0] == 0).nonzero()[:, 0], (batch.doc_index[0] == 1).nonzero()[:, 0]
    prefix = (batch.segment[0] == 0).nonzero()[:, 0]
    assert not allowed[second][:, first].any()
    assert allowed[second][:, prefix].all()
    assert allowed[batch.prefix_length, first].all() and allowed[batch.prefix_length, second].all()


def test_cached_parallel_step_equals_the_block_mask_pass(llm):
    batch = _batch(llm)
    loss_full, grad_full = _loss_and_grad(llm, batch, reuse_prefix=False)
    loss_cached, grad_cached = _loss_and_grad(llm, batch, reuse_prefix=True)
    torch.testing.assert_close(loss_cached, loss_full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_cached, grad_full, atol=1e-5, rtol=1e-5)
    assert grad_full.abs().sum() > 0


def test_candidate_order_does_not_matter(llm):
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    with torch.no_grad():
        loss = llm.target_loss(llm.collate([llm.encode("where is rome?", DOCS[:3], "italy")]), probs)
        permuted = [DOCS[2], DOCS[0], DOCS[1]]
        moved = llm.target_loss(
            llm.collate([llm.encode("where is rome?", permuted, "italy")]), probs[:, [2, 0, 1]]
        )
    torch.testing.assert_close(loss, moved, atol=1e-5, rtol=1e-5)


def test_parallel_head_scoring_runs_on_cached_documents(llm):
    prompts = [llm.encode(q, DOCS[:3], None) for q in ("where is rome?", "N/A")]
    masses = llm.document_mass([llm.collate(prompts[:1]), llm.collate(prompts[1:])])
    assert masses[0].shape == (1, llm.num_layers, llm.num_heads, 3)
    assert (masses[0] > 0).all() and (masses[0].sum(-1) <= 1 + 1e-5).all()


def _cached_llm(path, tmp_path, prompt=PARALLEL):
    return FrozenLLM.from_pretrained(path, heads=HEADS, prompt=prompt, document_cache_dir=tmp_path / "cache")


def _cache_and_loss(llm):
    batch = _batch(llm)
    with torch.no_grad():
        loss = llm.target_loss(batch, torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
    return llm.documents.stats.documents, loss


def test_document_cache_is_reused_from_disk(tiny_llama_dir, tmp_path):
    built, loss = _cache_and_loss(_cached_llm(tiny_llama_dir, tmp_path))
    assert built == 4  # four distinct candidates among the two examples
    again, loss_again = _cache_and_loss(_cached_llm(tiny_llama_dir, tmp_path))
    assert again == 0
    torch.testing.assert_close(loss_again, loss, atol=0, rtol=0)


@pytest.mark.parametrize("change", ["model", "settings", "text"])
def test_a_stale_cache_is_rebuilt_not_read(tiny_llama_dir, tmp_path, change):
    _cache_and_loss(_cached_llm(tiny_llama_dir, tmp_path))
    path, prompt, docs = tiny_llama_dir, PARALLEL, DOCS
    if change == "model":
        torch.manual_seed(1)
        path = make_tiny_llama(tmp_path / "other", num_layers=2, num_heads=4, num_kv_heads=2)
        other = FrozenLLM.from_pretrained(path)
        with torch.no_grad():
            other.model.get_decoder().layers[0].self_attn.k_proj.weight.mul_(1.5)
        other.model.save_pretrained(path)
    elif change == "settings":
        prompt = dataclasses.replace(PARALLEL, instruction="Answer the question.")
    else:
        docs = [(title, text + " too") for title, text in DOCS]
    stale = _cached_llm(path, tmp_path, prompt)
    fresh = FrozenLLM.from_pretrained(path, heads=HEADS, prompt=prompt)
    losses = []
    for model in (stale, fresh):
        prompts = [model.encode("what is the capital of france?", docs[:3], "paris")]
        with torch.no_grad():
            losses.append(model.target_loss(model.collate(prompts), torch.tensor([[0.5, 0.3, 0.2]])))
    assert stale.documents.stats.documents == 3  # nothing was read from the first cache
    torch.testing.assert_close(losses[0], losses[1], atol=0, rtol=0)


def test_bfloat16_stays_close_to_float32(tiny_llama_dir):
    losses = []
    for precision in ("float32", "bfloat16"):
        model = FrozenLLM.from_pretrained(tiny_llama_dir, heads=HEADS, prompt=PARALLEL, precision=precision)
        losses.append(_loss_and_grad(model, _batch(model), reuse_prefix=True))
    assert abs(float(losses[0][0] - losses[1][0])) < 0.05
    assert torch.nn.functional.cosine_similarity(losses[0][1].flatten(), losses[1][1].flatten(), dim=0) > 0.9


@pytest.mark.parametrize("objective", ["dream", "replug"])
def test_cli_trains_in_the_parallel_layout_with_a_disk_cache(
    tiny_bert_dir, tiny_llama_dir, tmp_path, objective
):
    rows = [{"_id": f"d{i}", "title": title, "text": text} for i, (title, text) in enumerate(DOCS)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = tmp_path / "train.jsonl"
    examples = [
        {"query": "what is the capital of france?", "target": "paris", "candidate_ids": ["d0", "d1", "d2"]},
        {"query": "where is madrid?", "target": "spain", "candidate_ids": ["d3", "d1", "d0"]},
    ]
    train.write_text("".join(json.dumps(e) + "\n" for e in examples))
    HeadSet("tiny", HEADS, [1.0] * len(HEADS), {"top_k": len(HEADS)}).save(tmp_path / "heads.json")
    arguments = ["train", "--train", str(train), "--corpus", str(tmp_path), "--objective", objective]
    arguments += ["--retriever", tiny_bert_dir, "--pooling", "mean", "--max-length", "32"]
    arguments += ["--llm", tiny_llama_dir, "--heads", str(tmp_path / "heads.json")]
    arguments += [
        "--document-layout",
        "parallel",
        "--precision",
        "bfloat16",
        "--retriever-precision",
        "bfloat16",
    ]
    arguments += ["--document-cache", str(tmp_path / "cache"), "--max-steps", "2", "--num-candidates", "3"]
    arguments += ["--no-show-progress", "--output-dir", str(tmp_path / "run")]
    assert main(arguments) == 0
    assert (tmp_path / "run" / "final" / "modules.json").exists()
    shards = list((tmp_path / "cache").glob("*/shard-*.safetensors"))
    assert len(shards) == 1  # all four candidates built once, before the first step


def test_document_cache_reads_many_shards_from_disk_with_few_open(tmp_path, monkeypatch):
    """Entries evicted from memory come back from disk unchanged, through a bounded set of open shards."""
    from dreamir.llm import doc_cache

    monkeypatch.setattr(doc_cache, "_OPEN_SHARDS", 3)

    def encoder(prefix: list[int], documents: list[list[int]]) -> list[doc_cache.KeysValues]:
        # Stand-in for the LLM: values that depend on the prefix and every token of the document.
        return [
            (
                torch.full((1, 1, len(d), 2), float(sum(d) + sum(prefix))),
                torch.full((1, 1, len(d), 2), -float(d[0])),
            )
            for d in documents
        ]

    documents = [[i, i + 1, i + 2][: 1 + i % 3] for i in range(1, 13)]
    cache = doc_cache.DocumentKVCache(encoder, "fp", directory=tmp_path, max_memory_bytes=1)
    for start in range(0, len(documents), 2):  # one shard per build: six shards
        cache.build([7], documents[start : start + 2])
    reopened = doc_cache.DocumentKVCache(encoder, "fp", directory=tmp_path, max_memory_bytes=1)
    for _ in range(2):
        entries = reopened.get([7], documents)
        assert reopened.stats.documents == 0  # every entry was read, none rebuilt
        for document, (keys, values) in zip(documents, entries, strict=True):
            expected_keys, expected_values = encoder([7], [document])[0]
            torch.testing.assert_close(keys.float(), expected_keys, atol=0, rtol=0)
            torch.testing.assert_close(values.float(), expected_values, atol=0, rtol=0)
        assert len(reopened._open_shards) <= 3


def _stand_in_encoder(prefix: list[int], documents: list[list[int]]):
    """Stand-in for the LLM: 4 float32 values (16 bytes) per token for keys and for values."""
    return [
        (
            torch.full((1, 1, len(d), 4), float(sum(d) + sum(prefix))),
            torch.full((1, 1, len(d), 4), -float(d[0])),
        )
        for d in documents
    ]


def _shards(directory) -> list:
    return sorted(directory.glob("*/shard-*.safetensors"))


def test_a_disk_bound_deletes_the_least_recently_used_shards(tmp_path):
    """Under max_disk_bytes the directory never holds more than the bound (one build aside), the shards
    dropped are the oldest unread ones, and what they held is built again, equal, when asked for."""
    import os

    from dreamir.llm import doc_cache

    documents = [[i, i + 1] for i in range(1, 9)]  # 2 tokens: 128 bytes of keys and values each
    unbounded = doc_cache.DocumentKVCache(_stand_in_encoder, "fp", directory=tmp_path / "all")
    unbounded.build([7], documents[:2])
    shard_bytes = unbounded.disk_bytes()  # one build of two documents, with its header
    assert shard_bytes > 256

    bound = 2 * shard_bytes + shard_bytes // 2  # room for two shards, not three
    cache = doc_cache.DocumentKVCache(
        _stand_in_encoder, "fp", directory=tmp_path / "bounded", max_memory_bytes=1, max_disk_bytes=bound
    )
    first, second = cache.build([7], documents[0:2]), cache.build([7], documents[2:4])
    assert (first.documents, second.documents) == (2, 2) and len(_shards(tmp_path / "bounded")) == 2
    oldest = _shards(tmp_path / "bounded")
    for path, seconds in zip(sorted(oldest, key=lambda p: p.stat().st_mtime), (100, 200), strict=True):
        os.utime(path, (seconds, seconds))  # distinct ages whatever the file system's clock resolution
    cache.get([7], documents[0:1])  # reading the first build makes it the most recently used
    assert cache.stats.found == 1 and cache.stats.documents == 4
    cache.build([7], documents[4:6])  # a third shard: over the bound, so the least recently used goes
    assert cache.disk_bytes() <= bound and len(_shards(tmp_path / "bounded")) == 2
    assert cache.stats.evicted_shards == 1
    cache.get([7], documents[0:2])  # the first build survived: found, nothing built
    assert cache.stats.documents == 6
    entries = cache.get([7], documents[2:4])  # the second was dropped: built again, the same values
    assert cache.stats.documents == 8
    for document, (keys, values) in zip(documents[2:4], entries, strict=True):
        expected_keys, expected_values = _stand_in_encoder([7], [document])[0]
        torch.testing.assert_close(keys, expected_keys, atol=0, rtol=0)
        torch.testing.assert_close(values, expected_values, atol=0, rtol=0)
    assert cache.disk_bytes() <= bound


def test_a_shard_deleted_by_another_process_is_built_again(tmp_path):
    from dreamir.llm import doc_cache

    documents = [[1, 2], [3, 4, 5]]
    cache = doc_cache.DocumentKVCache(_stand_in_encoder, "fp", directory=tmp_path, max_memory_bytes=1)
    cache.build([7], documents)
    other = doc_cache.DocumentKVCache(_stand_in_encoder, "fp", directory=tmp_path, max_memory_bytes=1)
    for path in _shards(tmp_path):
        path.unlink()  # what another process's disk bound does
    entries = other.get([7], documents)
    assert other.stats.documents == 2
    torch.testing.assert_close(entries[1][0], _stand_in_encoder([7], [documents[1]])[0][0], atol=0, rtol=0)


def test_a_disk_bound_must_be_positive(tmp_path):
    from dreamir.llm import doc_cache

    with pytest.raises(ValueError, match="max_disk_bytes must be positive"):
        doc_cache.DocumentKVCache(_stand_in_encoder, "fp", directory=tmp_path, max_disk_bytes=0)


@pytest.mark.parametrize("layout", ["sequential", "parallel"])
def test_a_prompt_without_the_query_ends_after_the_candidates_and_predicts_the_query(tiny_llama_dir, layout):
    """--no-show-query (adapt's --target-text query): the LLM reads the instruction and the candidates
    alone and predicts the query, so no query token is in the prompt it predicts from."""
    prompt = PromptSettings(document_layout=layout, show_query=False, instruction=QUERY_TARGET_INSTRUCTION)
    llm = FrozenLLM.from_pretrained(tiny_llama_dir, heads=HEADS, prompt=prompt)
    query = "what is the capital of france?"
    batch = llm.collate([llm.encode(query, DOCS[:3], query)])
    target = batch.labels[0] != -100
    decoded_prompt = llm.tokenizer.decode(batch.input_ids[0][~target & batch.attention_mask[0].bool()])
    assert "Question:" not in decoded_prompt and "capital of france?" not in decoded_prompt
    assert "paris is the capital" in decoded_prompt and decoded_prompt.count("documents below answer") == 1
    assert llm.tokenizer.decode(batch.labels[0][target]).startswith(query)
    assert not batch.query_rows.any() and batch.inject_rows.sum() == target.sum()
    if layout == "parallel":  # the cached step is still exact
        loss_full, grad_full = _loss_and_grad(llm, _two_queries_as_targets(llm), reuse_prefix=False)
        loss_cached, grad_cached = _loss_and_grad(llm, _two_queries_as_targets(llm), reuse_prefix=True)
        torch.testing.assert_close(loss_cached, loss_full, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad_cached, grad_full, atol=1e-5, rtol=1e-5)
        assert grad_full.abs().sum() > 0


def _two_queries_as_targets(llm):
    queries = ["what is the capital of france?", "where is madrid?"]
    return llm.collate(
        [llm.encode(queries[0], DOCS[:3], queries[0]), llm.encode(queries[1], DOCS[1:], queries[1])]
    )
