"""One decision for the compute dtype (dreamir.precision): what "auto" means on each kind of processor, that
every component follows it, that a run never continues silently in another dtype, and both paths end to end
(the bf16 one only where the processor computes bf16 natively)."""

import json
import warnings

import pytest
import torch

from dreamir import precision
from dreamir.adapt import adapt
from dreamir.checkpoints import CheckpointError
from dreamir.llm.frozen import FrozenLLM
from dreamir.llm.prompt import PromptSettings
from tests.test_adapt import _adapt_args, make_corpus, write_corpus

AMX = {"cpu_name": "Intel Xeon", "avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_bf16": True}
AVX2 = {"cpu_name": "AMD EPYC", "avx2": True}
AVX512_WITHOUT_BF16 = {"cpu_name": "Intel Xeon", "avx2": True, "avx512_f": True}
NATIVE = precision.native_bf16("cpu")
needs_native_bf16 = pytest.mark.skipif(
    not NATIVE,
    reason=f"this {precision.describe_device()} has no native bf16 (AMX / AVX512-BF16): the bf16 path is "
    "emulated there, tens of times slower, and is tested on processors that have it",
)


@pytest.fixture
def processor(monkeypatch):
    """Pretend to run on a processor with the given capability flags, with "auto" not pinned."""
    monkeypatch.delenv(precision.AUTO_OVERRIDE_VARIABLE, raising=False)
    monkeypatch.setattr(precision, "_warned", set())

    def use(flags: dict) -> None:
        monkeypatch.setattr(precision, "_cpu_capabilities", lambda: dict(flags))

    return use


@pytest.mark.parametrize(
    ("flags", "expected"), [(AMX, "bfloat16"), (AVX2, "float32"), (AVX512_WITHOUT_BF16, "float32")]
)
def test_auto_is_bf16_only_where_the_processor_computes_it_natively(processor, flags, expected):
    processor(flags)
    assert precision.resolve("auto") == expected
    assert precision.dtype_of("auto") == getattr(torch, expected)
    # a named dtype is taken as asked, whatever the processor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert precision.resolve("bfloat16") == "bfloat16"
    assert precision.resolve("float32") == "float32"


def test_bf16_without_native_support_warns_once_and_says_what_it_costs(processor):
    processor(AVX2)
    with pytest.warns(UserWarning, match=r"AMD EPYC .*no native bf16.*slower than float32"):
        precision.resolve("bfloat16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second request is not warned about again
        precision.resolve("bfloat16")
        precision.resolve("float32")
    processor(AMX)
    precision._warned.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # native: nothing to warn about
        precision.resolve("bfloat16")


def test_the_override_variable_decides_auto_and_a_bad_value_is_named(processor, monkeypatch):
    processor(AMX)
    monkeypatch.setenv(precision.AUTO_OVERRIDE_VARIABLE, "float32")
    assert precision.resolve("auto") == "float32"
    monkeypatch.setenv(precision.AUTO_OVERRIDE_VARIABLE, "fp16")
    with pytest.raises(ValueError, match="DREAMIR_AUTO_PRECISION='fp16'"):
        precision.resolve("auto")
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16"):
        precision.resolve("half")


def test_the_machine_record_names_the_processor_and_each_components_dtype(processor):
    processor(AVX2)
    record = precision.machine_record(llm="auto", retriever="float32")
    assert record["cpu"] == "AMD EPYC" and record["native_bf16"] is False and record["amx"] is False
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["dtypes"] == {"llm": "float32", "retriever": "float32"}
    assert record["threads"] == torch.get_num_threads()
    line = precision.describe_compute(record)
    assert "no native bf16" in line and "llm float32" in line


def test_the_frozen_llm_and_its_document_cache_follow_the_decision(processor, tiny_llama_dir):
    prompt = PromptSettings(document_layout="parallel")
    processor(AVX2)
    on_avx2 = FrozenLLM.from_pretrained(tiny_llama_dir, prompt=prompt, precision="auto")
    assert on_avx2.precision == "float32" and on_avx2.documents.dtype == torch.float32
    assert on_avx2.compute_model is on_avx2.model  # no bf16 copies of the weights
    processor(AMX)
    on_amx = FrozenLLM.from_pretrained(tiny_llama_dir, prompt=prompt, precision="auto")
    assert on_amx.precision == "bfloat16" and on_amx.documents.dtype == torch.bfloat16
    # A document's cached keys and values made in one dtype are never found under the other.
    document = [5, 6, 7]
    assert on_avx2.documents.key([1, 2], document) != on_amx.documents.key([1, 2], document)


def test_a_run_is_not_resumed_in_another_dtype(tmp_path, tiny_bert_dir, tiny_llama_dir, monkeypatch):
    """An interrupted run moved to a processor where "auto" means another dtype is refused, naming the
    setting, instead of silently continuing in the other dtype."""
    write_corpus(tmp_path / "corpus", make_corpus(30))
    args = _adapt_args(tmp_path, tiny_bert_dir, tiny_llama_dir, precision="auto", objective="infonce")
    adapt(args)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["machine"]["dtypes"] == {"all_stages": "float32"}
    # the finished run can be extended only in the dtype it was made in
    longer = _adapt_args(
        tmp_path, tiny_bert_dir, tiny_llama_dir, precision="auto", objective="infonce", max_steps=6
    )
    monkeypatch.setenv(precision.AUTO_OVERRIDE_VARIABLE, "bfloat16")
    with pytest.raises(CheckpointError, match=r"precision.*float32.*bfloat16|precision.*bfloat16.*float32"):
        adapt(longer)


def _adapt_in(tmp_path, tiny_bert_dir, tiny_llama_dir, dtype: str) -> dict:
    write_corpus(tmp_path / "corpus", make_corpus(30))
    return adapt(_adapt_args(tmp_path, tiny_bert_dir, tiny_llama_dir, precision=dtype))


def test_adapt_end_to_end_in_float32(tmp_path, tiny_bert_dir, tiny_llama_dir):
    report = _adapt_in(tmp_path, tiny_bert_dir, tiny_llama_dir, "float32")
    assert report["machine"]["dtypes"] == {"all_stages": "float32"}
    assert report["steps"] == 4 and (tmp_path / "out" / "model" / "modules.json").exists()
    machine = json.loads((tmp_path / "out" / "work" / "train" / "machine.json").read_text())
    assert machine["dtypes"] == {"retriever": "float32", "llm": "float32"}
    rows = [json.loads(line) for line in (tmp_path / "out" / "work" / "train" / "log.jsonl").open()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


@needs_native_bf16
def test_adapt_end_to_end_in_bf16(tmp_path, tiny_bert_dir, tiny_llama_dir):
    report = _adapt_in(tmp_path, tiny_bert_dir, tiny_llama_dir, "bfloat16")
    assert report["machine"]["dtypes"] == {"all_stages": "bfloat16"}
    machine = json.loads((tmp_path / "out" / "work" / "train" / "machine.json").read_text())
    assert machine["dtypes"] == {"retriever": "bfloat16", "llm": "bfloat16"}
    rows = [json.loads(line) for line in (tmp_path / "out" / "work" / "train" / "log.jsonl").open()]
    assert report["steps"] == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


def _dream_step(bert_dir, llama_dir, dtype: str) -> tuple[float, torch.Tensor]:
    """One DREAM step's loss and the gradient it sends into the retriever, with both models in ``dtype``."""
    from dreamir.objectives import DreamLoss, TrainingInstance
    from dreamir.retriever import Retriever, RetrieverConfig
    from tests.test_dream_objective import CORPUS, EXAMPLES

    torch.manual_seed(0)
    retriever = Retriever.from_pretrained(bert_dir, RetrieverConfig(pooling="mean", max_length=32)).eval()
    llm = FrozenLLM.from_pretrained(
        llama_dir, heads=[(0, 1), (1, 2)], prompt=PromptSettings(document_layout="parallel"), precision=dtype
    )
    objective = DreamLoss(retriever, llm, retriever_precision=dtype)
    instances = [TrainingInstance(e.query, e.target, [CORPUS[i] for i in e.candidate_ids]) for e in EXAMPLES]
    loss = objective(instances).loss
    loss.backward()
    gradient = torch.cat([p.grad.flatten() for p in retriever.parameters() if p.grad is not None])
    return float(loss), gradient


@needs_native_bf16
def test_a_dream_step_in_bf16_follows_the_float32_step(tiny_bert_dir, tiny_llama_dir):
    loss32, gradient32 = _dream_step(tiny_bert_dir, tiny_llama_dir, "float32")
    loss16, gradient16 = _dream_step(tiny_bert_dir, tiny_llama_dir, "bfloat16")
    assert loss16 == pytest.approx(loss32, rel=2e-2)
    # bf16 keeps about 3 significant digits: the gradient points the same way, not to the last bit
    cosine = torch.nn.functional.cosine_similarity(gradient16, gradient32, dim=0)
    assert cosine > 0.98


def test_a_dream_step_in_float32_is_deterministic_and_sends_a_gradient(tiny_bert_dir, tiny_llama_dir):
    loss, gradient = _dream_step(tiny_bert_dir, tiny_llama_dir, "float32")
    again, gradient_again = _dream_step(tiny_bert_dir, tiny_llama_dir, "float32")
    assert loss == again and torch.equal(gradient, gradient_again)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0
