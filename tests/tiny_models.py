"""Tiny, randomly initialised, deterministic HF models with offline tokenizers, for fast tests.

Nothing here touches the network: vocabularies are built in code with the ``tokenizers`` library.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertModel,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

# Whole words first (so common text tokenises into few pieces), then single letters/digits and
# "##x" continuations so that any lowercase ASCII text tokenises without [UNK].
_WORD_TEXT = (
    "the a an of to in is was are and or not for on with as by at from that this it be which who what "
    "where when how why capital city country france paris germany berlin italy rome spain madrid "
    "population river mountain language president people year years new old large small north south "
    "east west document query answer question text title born died war world first second user "
    "assistant system retrieval dense model llm cat dog sat mat sun moon water fire red blue green"
)
_WORDS = _WORD_TEXT.split()
_CHARS = list(string.ascii_lowercase + string.digits)
_PUNCT = list(".,;:!?'\"()-/%&[]{}<>+=*#@$_")
_PIECES = _WORDS + _CHARS + [f"##{c}" for c in _CHARS] + _PUNCT

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _wordpiece(specials: list[str], unk: str) -> tuple[Tokenizer, dict[str, int]]:
    vocab: dict[str, int] = {}
    for tok in [*specials, *_PIECES]:
        vocab.setdefault(tok, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=unk, max_input_chars_per_word=100))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()]
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok, vocab


def make_tiny_bert(dir: str | Path, hidden: int = 32, num_layers: int = 2, num_heads: int = 4) -> Path:
    """Save a tiny BERT (``BertModel``) plus a WordPiece tokenizer adding [CLS] ... [SEP]; return the dir."""
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok, vocab = _wordpiece(specials, "[UNK]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
        padding_side="right",
    )
    tokenizer.save_pretrained(out)

    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=512,
        pad_token_id=vocab["[PAD]"],
    )
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(out)
    return out


def _save_chatml_tokenizer(out: Path) -> dict[str, int]:
    """Save the tiny decoders' ChatML tokenizer (eos = pad = ``<|im_end|>``, no BOS added) into ``out``;
    return its vocabulary."""
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    tok, vocab = _wordpiece(specials, "<unk>")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
        model_max_length=256,
        padding_side="right",
        model_input_names=["input_ids", "attention_mask"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(out)
    return vocab


def make_tiny_llama(
    dir: str | Path, num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2, hidden: int = 32
) -> Path:
    """Save a tiny Llama (``LlamaForCausalLM``, GQA) plus a ChatML tokenizer; return the dir.

    eos = pad = ``<|im_end|>``; no BOS is added; ``apply_chat_template`` works.
    """
    out = Path(dir)
    vocab = _save_chatml_tokenizer(out)

    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=256,
        bos_token_id=vocab["<|im_start|>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|im_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).eval().save_pretrained(out)
    return out


def make_tiny_gemma3(dir: str | Path, sliding_window: int, hidden: int = 32) -> Path:
    """Save a tiny Gemma 3 text model (layer 0 sliding-window attention, layer 1 full; 4 query heads, 1
    key-value head) with the tiny Llama's ChatML tokenizer; return the dir."""
    out = Path(dir)
    vocab = _save_chatml_tokenizer(out)
    config = Gemma3TextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=256,
        sliding_window=sliding_window,
        layer_types=["sliding_attention", "full_attention"],
        bos_token_id=vocab["<|im_start|>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|im_end|>"],
    )
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).eval().save_pretrained(out)
    return out
