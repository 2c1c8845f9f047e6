"""The real packaged SmolLM2-135M-Instruct (converted from its GGUF once, then cached)."""

import pytest
import torch

from dreamir.llm.frozen import FrozenLLM
from dreamir.models import SMOLLM2

pytestmark = pytest.mark.integration

DOCS = [
    ("France - Capital", "name: Paris. geographic coordinates: 48 52 N, 2 20 E"),
    ("Germany - Capital", "name: Berlin. geographic coordinates: 52 31 N, 13 24 E"),
    ("Peru - Population", "total: 32,600,249 (2024 est.)"),
    ("Spain - Capital", "name: Madrid. geographic coordinates: 40 24 N, 3 41 W"),
]


@pytest.fixture(scope="module")
def smollm2():
    return FrozenLLM.from_pretrained(SMOLLM2, heads=[(12, 3), (18, 1), (18, 7), (25, 0)])


def test_smollm2_shape_and_chat_template(smollm2):
    assert (smollm2.num_layers, smollm2.num_heads, smollm2.model.config.num_key_value_heads) == (30, 9, 3)
    prompt = smollm2.encode("What is the capital of Spain?", DOCS, "Madrid")
    assert smollm2.tokenizer.decode(prompt.input_ids[prompt.target_start :]) == "Madrid<|im_end|>"


def test_cached_prefix_step_equals_the_reference_on_smollm2(smollm2):
    prompts = [
        smollm2.encode("What is the capital of Spain?", DOCS, "Madrid"),
        smollm2.encode("How many people live in Peru?", DOCS[1:], "about 32.6 million"),
    ]
    batch = smollm2.collate(prompts)
    results = []
    for reuse_prefix in (False, True):
        scores = torch.tensor([[0.1, 0.4, -0.3, 0.9], [0.2, 0.8, 0.1, 0.0]], requires_grad=True)
        probs = torch.softmax((scores / 0.1).masked_fill(~batch.candidate_mask, float("-inf")), -1)
        loss = smollm2.target_loss(batch, probs, reuse_prefix=reuse_prefix)
        loss.backward()
        results.append((loss.detach(), scores.grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-4, rtol=1e-4)
    assert results[0][1].abs().sum() > 0
