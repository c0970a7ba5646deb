"""Tiny real models for the desktop tests, built offline: a 2-layer Llama and its tokenizer.

The weights are random, so the model babbles, but transformers loads, describes and runs it
exactly as it would a big one.
"""

from __future__ import annotations

from pathlib import Path

WORDS = [
    "the",
    "capital",
    "of",
    "france",
    "is",
    "paris",
    "italy",
    "rome",
    "model",
    "weights",
    "quantize",
    "scale",
    "zero",
    "point",
    "grid",
    "train",
    "tune",
    "answer",
    "question",
    "small",
    "large",
    "fast",
    "slow",
    "memory",
    "layer",
    "token",
    "bit",
    "float",
    "integer",
]
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<user>", "<assistant>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(SPECIALS + WORDS + ["?", ".", ","])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<user>", "<assistant>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Zero rows give special tokens a logit of 0 while the others are random around it,
        # so greedy decoding (practically) never picks EOS and answers run to max length.
        for token_id in tokenizer.all_special_ids:
            model.lm_head.weight[token_id].zero_()
    return model.eval()


def save_tiny_model(folder: Path) -> Path:
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_pickle_only_model(folder: Path) -> Path:
    """The same model with its weights only in pytorch_model.bin (a pickle file)."""
    import torch

    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    tokenizer.save_pretrained(folder)
    return folder


def save_folder_without_config(folder: Path) -> Path:
    """Weights and tokenizer but no config.json: not a loadable model."""
    save_tiny_model(folder)
    (folder / "config.json").unlink()
    return folder
