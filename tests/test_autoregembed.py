"""AutoRegEmbed on tiny models: compress-token pooling, information compression (IC) and conditional
distribution alignment (CDA) through the frozen decoder, saving and the command line."""

from __future__ import annotations

import json

import pytest
import torch

from dreamir import cli
from dreamir.arguments import COMPRESS_DOCUMENT_TEMPLATE, COMPRESS_QUERY_TEMPLATE, ModelArguments
from dreamir.llm.causal_lm import FrozenCausalLM
from dreamir.llm.frozen import FrozenLLM
from dreamir.objectives import AutoRegEmbedCDALoss, AutoRegEmbedICLoss, TrainingInstance
from dreamir.retriever import LoraSettings, Retriever, RetrieverConfig
from dreamir.workflow import load_retriever
from tests.test_cli_commands import _train_argv, data  # noqa: F401  (the fixture)
from tests.test_dream_objective import CORPUS, EXAMPLES

K = 3
TEXTS = ["the cat sat on the mat", "paris is the capital of france"]


def _retriever(llama_dir: str, lora: bool = True) -> Retriever:
    config = RetrieverConfig(
        pooling="compress",
        compress_tokens=K,
        max_length=48,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0) if lora else None,
        query_suffix="\nin one word:",
        document_suffix="\nthe word is:",
    )
    return Retriever.from_pretrained(llama_dir, config)


def _instances(labelled: bool = True) -> list[TrainingInstance]:
    return [
        TrainingInstance(
            e.query,
            e.target,
            [CORPUS[i] for i in e.candidate_ids],
            gold=CORPUS[e.gold_id] if labelled else None,
        )
        for e in EXAMPLES
    ]


def _step(objective, instances) -> None:
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=5e-2)
    objective(instances).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_the_tokenizer_appends_the_compress_tokens_and_keeps_them_when_truncating(tiny_llama_dir):
    retriever = _retriever(tiny_llama_dir)
    ids = retriever.compress_token_ids
    assert len(ids) == K and retriever.tokenizer.convert_ids_to_tokens(ids) == [
        "<EMBED0>",
        "<EMBED1>",
        "<EMBED2>",
    ]
    long = retriever.tokenize(["the cat " * 100], max_length=10)["input_ids"][0].tolist()
    assert len(long) == 10 and long[-K:] == ids
    short = retriever.tokenize(TEXTS)
    for row, mask in zip(short["input_ids"], short["attention_mask"], strict=True):
        assert row[: int(mask.sum())].tolist()[-K:] == ids  # right padding after the compress tokens
    states = retriever.compress(TEXTS, is_query=False)
    assert states.shape == (2, K, retriever.embedding_dim)
    embeddings = retriever(TEXTS, is_query=False)
    torch.testing.assert_close(embeddings, torch.nn.functional.normalize(states.mean(1), dim=-1))


def test_ic_feeds_the_soft_prompt_to_a_frozen_decoder_and_trains_encoder_and_tokens(tiny_llama_dir):
    retriever = _retriever(tiny_llama_dir)
    llm = FrozenLLM.from_pretrained(tiny_llama_dir)
    objective = AutoRegEmbedICLoss(retriever, llm, texts_per_example=2)
    seen = {}

    def capture(module, args, kwargs):
        seen["inputs_embeds"] = kwargs["inputs_embeds"].detach().clone()

    handle = llm.decoder.register_forward_pre_hook(capture, with_kwargs=True)
    instances = _instances(labelled=False)
    output = objective(instances)
    handle.remove()
    texts = list({d.doc_id: d.full_text for i in instances for d in i.documents[:2]}.values())
    assert output.logs["texts"] == len(texts)
    # The decoder's input starts with the k compress-token states, then the text's own token embeddings.
    torch.testing.assert_close(
        seen["inputs_embeds"][:, :K], retriever.compress(texts, is_query=False).detach()
    )
    first = llm.tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(
        seen["inputs_embeds"][0, K : K + len(first)], llm.embed_tokens(torch.tensor([first]))[0]
    )
    frozen = {n: p.detach().clone() for n, p in llm.named_parameters()}
    output.loss.backward()
    grads = {n: p.grad for n, p in retriever.named_parameters() if p.requires_grad}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora" in n)
    token_grads = [g for n, g in grads.items() if "trainable_tokens" in n]
    assert token_grads and token_grads[0].abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in llm.parameters())
    _step(objective, instances)
    assert all(p.equal(frozen[n]) for n, p in llm.named_parameters())


def test_full_fine_tuning_trains_the_compress_token_rows(tiny_llama_dir):
    retriever = _retriever(tiny_llama_dir, lora=False)
    objective = AutoRegEmbedICLoss(retriever, FrozenCausalLM.from_pretrained(tiny_llama_dir))
    objective(_instances(labelled=False)).loss.backward()
    rows = retriever.backbone.get_input_embeddings().weight.grad
    assert rows[retriever.compress_token_ids].abs().sum(-1).gt(0).all()


def test_ic_loss_is_the_mean_token_cross_entropy_of_the_text(tiny_llama_dir):
    retriever = _retriever(tiny_llama_dir)
    objective = AutoRegEmbedICLoss(retriever, FrozenCausalLM.from_pretrained(tiny_llama_dir), target_tokens=4)
    instances = _instances(labelled=False)[:1]
    output = objective(instances)
    assert output.logs["target_tokens"] == 5  # 4 tokens of the text, then EOS
    text = instances[0].documents[0].full_text
    ids = [
        *objective.llm.tokenizer(text, add_special_tokens=False)["input_ids"][:4],
        objective.llm.tokenizer.eos_token_id,
    ]
    prompt = retriever.compress([text], is_query=False)
    embeds = torch.cat([prompt, objective.llm.embed_tokens(torch.tensor([ids]))], dim=1)
    logits = objective.llm.model(inputs_embeds=embeds).logits[0, K - 1 : -1]
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor(ids))
    torch.testing.assert_close(output.loss, expected, rtol=1e-5, atol=1e-5)


def test_cda_reference_scores_come_from_the_frozen_starting_model_once(tiny_llama_dir):
    torch.manual_seed(0)
    llm = FrozenCausalLM.from_pretrained(tiny_llama_dir)
    # The "IC-stage model": trained a little, so that it differs from a fresh one.
    ic = AutoRegEmbedICLoss(_retriever(tiny_llama_dir), llm)
    _step(ic, _instances(labelled=False))
    ic.eval()
    cda = AutoRegEmbedCDALoss(ic.retriever, llm, negatives=2)
    instances = _instances()
    pairs = [(q, d) for q, gold, negatives in cda.triples(instances) for d in [gold, *negatives]]
    with torch.no_grad():
        prompts = ic.retriever.compress([q for q, _ in pairs], is_query=True)
        expected, _ = ic.log_likelihood(prompts, [d.full_text for _, d in pairs])
    torch.testing.assert_close(cda.reference_scores(pairs), expected)
    cda.train()
    for _ in range(2):
        _step(cda, instances)
    assert len(cda._reference_scores) == len(set((q, d.doc_id) for q, d in pairs))
    # Training moved the retriever, not the reference: cached and recomputed scores are the IC model's.
    with torch.no_grad():
        moved, _ = ic.log_likelihood(
            cda.retriever.compress([q for q, _ in pairs], is_query=True), [d.full_text for _, d in pairs]
        )
    assert not torch.allclose(moved, expected)
    torch.testing.assert_close(cda.reference_scores(pairs), expected)
    cda._reference_scores.clear()
    torch.testing.assert_close(cda.reference_scores(pairs), expected)
    assert not any(p.requires_grad for p in cda.reference.parameters())
    assert not any(n.startswith("reference.") for n, _ in cda.named_parameters())


def test_cda_loss_follows_the_formula(tiny_llama_dir, monkeypatch):
    cda = AutoRegEmbedCDALoss(
        _retriever(tiny_llama_dir),
        FrozenCausalLM.from_pretrained(tiny_llama_dir),
        beta=0.5,
        alignment_temperature=0.2,
    )
    instances = _instances()[:1]
    # Rows: q -> d+, q -> d-, then d+ -> d+.
    values = torch.tensor([-3.0, -5.0, -2.0], requires_grad=True)
    monkeypatch.setattr(cda, "log_likelihood", lambda prompts, targets: (values, torch.ones(3)))
    monkeypatch.setattr(cda, "reference_scores", lambda pairs: torch.tensor([-4.0, -4.5]))
    loss = cda(instances).loss
    z = (-3.0 - -5.0) + (-4.0 - -4.5)
    s2 = torch.sigmoid(torch.tensor(0.5 * z))
    s1 = torch.sigmoid(torch.tensor(0.5 * abs(-3.0 - -2.0)))
    expected = -torch.log(torch.exp(-s1 / 0.2) / (torch.exp(-s1 / 0.2) + torch.exp(-s2 / 0.2)))
    torch.testing.assert_close(loss.detach(), expected)


def test_cda_needs_labels_and_both_stages_need_compress_pooling(tiny_llama_dir, tiny_bert_dir):
    llm = FrozenCausalLM.from_pretrained(tiny_llama_dir)
    cda = AutoRegEmbedCDALoss(_retriever(tiny_llama_dir), llm)
    with pytest.raises(ValueError, match="needs examples with a gold_id"):
        cda(_instances(labelled=False))
    with pytest.raises(ValueError, match="--pooling compress"):
        AutoRegEmbedICLoss(Retriever.from_pretrained(tiny_bert_dir), llm)


def test_a_saved_model_encodes_identically_after_reload_with_and_without_dreamir(tiny_llama_dir, tmp_path):
    objective = AutoRegEmbedICLoss(_retriever(tiny_llama_dir), FrozenCausalLM.from_pretrained(tiny_llama_dir))
    _step(objective, _instances(labelled=False))
    retriever = objective.retriever.eval()
    queries = retriever.encode_queries(TEXTS, show_progress=False)
    documents = retriever.encode_documents(TEXTS, show_progress=False)
    retriever.save(tmp_path / "model")
    reloaded = Retriever.load(tmp_path / "model")
    assert reloaded.config.pooling == "compress" and reloaded.config.compress_tokens == K
    torch.testing.assert_close(
        torch.from_numpy(reloaded.encode_queries(TEXTS)), torch.from_numpy(queries), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        torch.from_numpy(reloaded.encode_documents(TEXTS)), torch.from_numpy(documents), rtol=1e-5, atol=1e-5
    )
    # sentence-transformers alone: its own copy of the pooling module, the template applied by hand.
    from sentence_transformers import SentenceTransformer

    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(tmp_path / "model"), device="cpu")
    st = SentenceTransformer(str(tmp_path / "model"), device="cpu", trust_remote_code=True)
    plain = st.encode([t + "\nthe word is:" for t in TEXTS])
    torch.testing.assert_close(torch.from_numpy(plain), torch.from_numpy(documents), rtol=1e-5, atol=1e-5)


def test_templates_default_to_the_papers_for_a_new_compress_model(tiny_llama_dir):
    retriever = load_retriever(
        ModelArguments(retriever=tiny_llama_dir, pooling="compress", compress_tokens=2)
    )
    query_prefix, query_suffix = COMPRESS_QUERY_TEMPLATE.split("{text}")
    assert (retriever.config.query_prefix, retriever.config.query_suffix) == (query_prefix, query_suffix)
    assert retriever.config.document_suffix == COMPRESS_DOCUMENT_TEMPLATE.split("{text}")[1]
    own = load_retriever(
        ModelArguments(retriever=tiny_llama_dir, pooling="compress", document_template="doc: {text} means")
    )
    assert (own.config.document_prefix, own.config.document_suffix) == ("doc: ", " means")
    with pytest.raises(ValueError, match="--query-template must contain"):
        ModelArguments(query_template="no placeholder")
    with pytest.raises(ValueError, match="not both"):
        ModelArguments(query_template="{text}", query_prefix="q: ")


def test_both_stages_train_through_the_cli_one_after_the_other(data, tiny_llama_dir, tmp_path, capsys):  # noqa: F811
    common = ["--pooling", "compress", "--compress-tokens", str(K), "--lora", "--lora-r", "4"]
    ic = tmp_path / "ic"
    argv = _train_argv(data, tiny_llama_dir, tiny_llama_dir, ic, "--objective", "autoregembed-ic", *common)
    assert cli.main(argv) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    saved = json.loads((ic / "final" / "dreamir_retriever.json").read_text())
    assert saved["pooling"] == "compress" and saved["compress_tokens"] == K
    assert saved["query_suffix"] == COMPRESS_QUERY_TEMPLATE.split("{text}")[1]
    cda = tmp_path / "cda"
    argv = _train_argv(
        data,
        str(ic / "final"),
        tiny_llama_dir,
        cda,
        "--objective",
        "autoregembed-cda",
        "--lora",
        "--lora-r",
        "4",
    )
    argv[argv.index("--pooling") + 1] = "compress"
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in (cda / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("margin" in r for r in rows)
    assert Retriever.load(cda / "final").encode(["paris"], show_progress=False).shape == (1, 32)


def test_adapt_trains_information_compression_on_a_corpus_alone(tmp_path, tiny_llama_dir):
    from dreamir.adapt import adapt
    from tests.test_adapt import _adapt_args, make_corpus, write_corpus

    write_corpus(tmp_path / "corpus", make_corpus(30))
    args = _adapt_args(
        tmp_path, tiny_llama_dir, tiny_llama_dir, objective="autoregembed-ic", lora=True, retriever_layers=1
    )
    report = adapt(args)
    assert report["steps"] == 4 and set(report["validation"]["by_step"]) == {2, 4}
    model = Retriever.load(tmp_path / "out" / "model")
    assert model.config.pooling == "compress" and model.config.num_layers == 1
    log = [json.loads(line) for line in (tmp_path / "out" / "work" / "train" / "log.jsonl").open()]
    assert all(row["target_tokens"] > 0 for row in log)


def test_a_resumed_alignment_run_keeps_the_starting_model_as_its_reference(tiny_llama_dir, tmp_path):
    from dreamir.trainer import Trainer, TrainingArguments

    _retriever(tiny_llama_dir).save(tmp_path / "ic")
    llm = FrozenCausalLM.from_pretrained(tiny_llama_dir)

    def run(max_steps: int) -> AutoRegEmbedCDALoss:
        start = Retriever.load(tmp_path / "ic")
        objective = AutoRegEmbedCDALoss(start, llm)
        args = TrainingArguments(
            output_dir=str(tmp_path / "cda"), max_steps=max_steps, save_steps=1, learning_rate=5e-2,
            show_progress=False, allow_longer_run=True,
        )  # fmt: skip
        Trainer(objective, EXAMPLES, CORPUS, args).train()
        return objective

    run(1)
    resumed = run(2)
    start = Retriever.load(tmp_path / "ic").state_dict()
    reference = resumed.reference.state_dict()
    assert all(reference[k].equal(v) for k, v in start.items())
    # The retriever did train (LoRA's B starts at zero), over one run resumed from its step-1 checkpoint.
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in resumed.retriever.state_dict().items())
    log = [json.loads(line) for line in (tmp_path / "cda" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2]
