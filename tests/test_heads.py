"""Head selection ranks a planted query-focused head first."""

import json

import pytest
import torch

from dreamir.cli import main
from dreamir.data.errors import DataFormatError
from dreamir.llm.frozen import FrozenLLM
from dreamir.llm.heads import CalibrationExample, HeadSet, random_heads, rank_heads, score_heads

WORDS = [
    "paris",
    "berlin",
    "rome",
    "madrid",
    "river",
    "mountain",
    "cat",
    "dog",
    "sun",
    "moon",
    "fire",
    "water",
]


def _plant_query_focused_head(llm: FrozenLLM, layer: int, head: int) -> None:
    """Make (layer, head) attend from each token to the keys carrying the same word, whatever its position.

    With identity-like projections on the token embedding, query·key is large exactly when two tokens are the
    same word; the query's words then point at the document that contains them.
    """
    attention = llm.model.model.layers[layer].self_attn
    config = llm.model.config
    head_dim = config.hidden_size // config.num_attention_heads
    groups = config.num_attention_heads // config.num_key_value_heads
    embed = llm.model.model.embed_tokens.weight
    with torch.no_grad():
        # Orthogonal-ish random embeddings; identity read-out of the first head_dim coordinates.
        embed.copy_(torch.randn_like(embed))
        q_rows = slice(head * head_dim, (head + 1) * head_dim)
        kv = head // groups
        k_rows = slice(kv * head_dim, (kv + 1) * head_dim)
        attention.q_proj.weight[q_rows] = 0
        attention.k_proj.weight[k_rows] = 0
        eye = torch.eye(head_dim) * 6.0
        attention.q_proj.weight[q_rows, :head_dim] = eye
        attention.k_proj.weight[k_rows, :head_dim] = torch.eye(head_dim)
        # Rotary embeddings would mix position in; a large rope base keeps low-frequency pairs nearly static.


def _examples(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        words = [WORDS[i] for i in torch.randperm(len(WORDS), generator=g)[:4].tolist()]
        docs = [(w, f"{w} {w} {w}") for w in words]
        gold = int(torch.randint(0, 4, (1,), generator=g))
        examples.append(
            CalibrationExample(query=f"{words[gold]} {words[gold]}", documents=docs, gold_index=gold)
        )
    return examples


def test_planted_head_is_ranked_first(tiny_llama_dir):
    torch.manual_seed(0)
    llm = FrozenLLM.from_pretrained(tiny_llama_dir)
    _plant_query_focused_head(llm, layer=1, head=2)
    scores = score_heads(llm, _examples(), batch_size=4, show_progress=False)
    ranked = rank_heads(scores, "tiny")
    assert ranked.heads[0] == (1, 2)
    assert ranked.scores[0] > ranked.scores[1]


def test_head_file_round_trip_and_random_heads(tmp_path):
    heads = rank_heads(torch.tensor([[0.1, 0.5], [0.3, -0.2]]), "tiny", {"calibration": 4})
    assert heads.heads == [(0, 1), (1, 0), (0, 0), (1, 1)]
    heads.save(tmp_path / "heads.json")
    loaded = HeadSet.load(tmp_path / "heads.json")
    assert loaded == heads
    assert loaded.top(2) == [(0, 1), (1, 0)]
    picked = random_heads(30, 9, 16, seed=1, model="m")
    assert len(set(picked.heads)) == 16 and picked.heads == random_heads(30, 9, 16, seed=1, model="m").heads


def _head_file(tmp_path, heads, model="m", prefix=b""):
    path = tmp_path / "heads.json"
    path.write_bytes(prefix + json.dumps({"model": model, "heads": heads}).encode())
    return path


@pytest.mark.parametrize(
    ("heads", "entry", "reason"),
    [
        ([{"layer": 0, "head": 1}, {"layer": 0, "head": 1}], "heads[1]", "duplicate of heads[0]"),
        ([{"layer": 1.0, "head": 1}], "heads[0].layer", "non-negative integer, got 1.0"),
        ([{"layer": 0, "head": True}], "heads[0].head", "non-negative integer, got True"),
        ([{"layer": "2", "head": 1}], "heads[0].layer", "non-negative integer, got '2'"),
        ([{"layer": 0, "head": -1}], "heads[0].head", "must be >= 0, got -1"),
        ([{"layer": 0}], "heads[0].head", "missing"),
        ([{"layer": 0, "head": 1, "score": False}], "heads[0].score", "expected a number"),
    ],
)
def test_head_file_rejects_bad_entries_naming_the_file_and_the_entry(tmp_path, heads, entry, reason):
    path = _head_file(tmp_path, heads)
    with pytest.raises(DataFormatError) as caught:
        HeadSet.load(path)
    assert str(path) in str(caught.value) and f"field '{entry}'" in str(caught.value)
    assert reason in str(caught.value)


def test_head_file_with_a_byte_order_mark_loads(tmp_path):
    path = _head_file(tmp_path, [{"layer": 0, "head": 1, "score": 0.5}], prefix="\ufeff".encode())
    assert HeadSet.load(path).heads == [(0, 1)]


def test_head_file_of_another_model_or_shape_is_refused_naming_the_file(
    tmp_path, tiny_llama_dir, tiny_bert_dir
):
    path = tmp_path / "heads.json"
    for model in ("smollm2-135m-instruct", tiny_bert_dir):
        HeadSet(model, [(0, 1)], [1.0]).save(path)
        with pytest.raises(DataFormatError) as caught:
            HeadSet.load(path).check_fits(tiny_llama_dir, path)
        assert (
            str(path) in str(caught.value)
            and model in str(caught.value)
            and tiny_llama_dir in str(caught.value)
        )
    # The same model under another spelling, and a name that is no model (nothing to compare), pass.
    for model in (tiny_llama_dir + "/", "tiny"):
        HeadSet(model, [(1, 3)], [1.0]).save(path)
        HeadSet.load(path).check_fits(tiny_llama_dir, path)
    HeadSet("tiny", [(0, 1), (2, 0)], [1.0, 0.5]).save(path)  # the tiny Llama has 2 layers x 4 heads
    with pytest.raises(DataFormatError, match=r"heads\[1\] \(layer 2, head 0\) is outside") as caught:
        HeadSet.load(path).check_fits(tiny_llama_dir, path)
    assert str(path) in str(caught.value)


def test_train_refuses_a_head_file_of_another_llm_before_loading_it(
    tmp_path, tiny_llama_dir, tiny_bert_dir, capsys
):
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d0", "text": "paris"}\n{"_id": "d1", "text": "rome"}\n')
    (tmp_path / "train.jsonl").write_text('{"query": "q", "target": "t", "candidate_ids": ["d0", "d1"]}\n')
    HeadSet("smollm2-135m-instruct", [(0, 1)], [1.0]).save(tmp_path / "heads.json")
    arguments = ["train", "--train", str(tmp_path / "train.jsonl"), "--corpus", str(tmp_path)]
    arguments += [
        "--retriever",
        tiny_bert_dir,
        "--llm",
        tiny_llama_dir,
        "--heads",
        str(tmp_path / "heads.json"),
    ]
    arguments += ["--max-steps", "1", "--no-show-progress", "--output-dir", str(tmp_path / "run")]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert "heads.json" in error and "smollm2-135m-instruct" in error and tiny_llama_dir in error
