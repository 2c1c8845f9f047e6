"""Head selection ranks a planted query-focused head first."""

import torch

from dreamir.heads import CalibrationExample, HeadSet, random_heads, rank_heads, score_heads
from dreamir.llm.frozen import FrozenLLM

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
