"""Weight averaging with the base (``dreamir adapt --base-weight``), on a tiny BERT retriever."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from dreamir.adapt import adapt
from dreamir.adapt.averaging import average_with_base
from dreamir.retriever import Retriever
from tests.test_adapt import _adapt_args, make_corpus, write_corpus
from tests.test_anchor import _perturb


def _pair(tiny_bert_dir):
    base = Retriever.from_pretrained(tiny_bert_dir)
    adapted = Retriever.from_pretrained(tiny_bert_dir)
    _perturb(adapted, scale=0.1)
    return adapted, base


@pytest.mark.parametrize("weight", [0.0, 0.25, 1.0])
def test_every_weight_moves_to_its_share_of_the_way_back(tiny_bert_dir, weight):
    adapted, base = _pair(tiny_bert_dir)
    before = {n: w.clone() for n, w in adapted.state_dict().items()}
    averaged = average_with_base(adapted, base, weight).state_dict()
    theirs = base.state_dict()
    moved = 0
    for name, value in averaged.items():
        expected = (1 - weight) * before[name] + weight * theirs[name]
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
        moved += not torch.equal(before[name], theirs[name])
    assert moved > 0  # the perturbation changed the weights the test compares


def test_the_averaged_model_encodes_between_the_two(tiny_bert_dir):
    adapted, base = _pair(tiny_bert_dir)
    texts = ["a passage about rivers", "another about mountains"]
    far = adapted.encode_documents(texts, show_progress=False)
    near = base.encode_documents(texts, show_progress=False)
    middle = average_with_base(adapted, base, 0.5).encode_documents(texts, show_progress=False)
    distance = lambda a, b: float(torch.as_tensor(a - b).norm())  # noqa: E731
    assert distance(middle, near) < distance(far, near)


def test_retrievers_of_other_shapes_are_refused(tiny_bert_dir, tmp_path):
    from tests.tiny_models import make_tiny_bert

    other = Retriever.from_pretrained(make_tiny_bert(tmp_path / "wide", hidden=48))
    with pytest.raises(ValueError, match=r"weight .*adapted.*base"):
        average_with_base(Retriever.from_pretrained(tiny_bert_dir), other, 0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        average_with_base(*_pair(tiny_bert_dir), 1.5)


def test_adapt_writes_the_average_and_reuses_its_training(tmp_path, tiny_bert_dir, tiny_llama_dir):
    write_corpus(tmp_path / "corpus", make_corpus(30))
    args = _adapt_args(tmp_path, tiny_bert_dir, tiny_llama_dir)
    adapt(args)
    out = tmp_path / "out"
    kept = load_file(out / "work" / "train" / "best" / "model.safetensors")
    log = (out / "work" / "train" / "log.jsonl").read_text()
    # The whole way back: the starting retriever's weights, from the same training (nothing re-run).
    report = adapt(dataclasses.replace(args, base_weight=1.0))
    written = load_file(out / "model" / "model.safetensors")
    assert (out / "work" / "train" / "log.jsonl").read_text() == log
    assert report["settings"]["base_weight"] == 1.0
    assert "averaged with" in (out / "report.md").read_text()
    names = [n for n in written if n in kept]
    assert names and any(not torch.equal(kept[n], written[n]) for n in names)
    starting = Retriever.from_pretrained(tiny_bert_dir).state_dict()
    now = Retriever.from_pretrained(out / "model").state_dict()
    assert now.keys() == starting.keys()
    for name, value in now.items():
        torch.testing.assert_close(value, starting[name], rtol=1e-6, atol=1e-7)
    assert json.loads((out / "model" / "dreamir_manifest.json").read_text())


def test_the_base_weight_is_checked():
    with pytest.raises(ValueError, match="--base-weight"):
        _adapt_args_plain(base_weight=-0.1)


def test_the_default_base_weight_is_a_quarter_for_all_weights_and_zero_with_lora_or_added_tokens():
    assert _adapt_args_plain(lora=False).base_weight == 0.25
    assert _adapt_args_plain(lora=False, base_weight=0.0).base_weight == 0.0
    # Averaging measured below LoRA's own checkpoints on both corpora: LoRA writes its checkpoint as it is.
    assert _adapt_args_plain().lora and _adapt_args_plain().base_weight == 0.0
    assert _adapt_args_plain(base_weight=0.25).base_weight == 0.25
    # autoregembed-ic's retriever gains compression tokens: nothing in the base to average them with.
    assert _adapt_args_plain(objective="autoregembed-ic").base_weight == 0.0
    with pytest.raises(ValueError, match=r"--base-weight 0\.5: --objective autoregembed-ic adds compression"):
        _adapt_args_plain(objective="autoregembed-ic", base_weight=0.5)


def _adapt_args_plain(**overrides):
    from dreamir.adapt import AdaptArguments

    return AdaptArguments(corpus="c", out="o", **overrides)


def test_a_lora_run_s_checkpoint_is_averaged_as_the_plain_model_it_saved(tiny_bert_dir, tmp_path):
    import dataclasses as dc

    from dreamir.adapt import AdaptArguments
    from dreamir.adapt.averaging import average_checkpoint
    from dreamir.retriever.config import LoraSettings

    config = dc.replace(Retriever.read_config(tiny_bert_dir), lora=LoraSettings(r=2, alpha=4))
    trained = Retriever.from_pretrained(tiny_bert_dir, config)
    _perturb(trained, scale=0.1)  # the adapters move: the merged weights differ from the base
    trained.save(tmp_path / "best")
    merged = Retriever.from_pretrained(
        tmp_path / "best", dc.replace(Retriever.read_config(tmp_path / "best"), lora=None)
    ).state_dict()
    args = AdaptArguments(corpus="c", out="o", retriever=tiny_bert_dir, lora=True, base_weight=0.5)
    average_checkpoint(args, tmp_path / "best", tmp_path / "averaged")
    averaged = Retriever.from_pretrained(tmp_path / "averaged")
    assert averaged.config.lora is None
    base = Retriever.from_pretrained(tiny_bert_dir).state_dict()
    assert any(not torch.equal(merged[n], base[n]) for n in base)
    for name, value in averaged.state_dict().items():
        torch.testing.assert_close(value, (merged[name] + base[name]) / 2, rtol=1e-6, atol=1e-7)
