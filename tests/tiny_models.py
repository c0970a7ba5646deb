"""Tiny real models for the tests, built offline: a 2-layer Llama and a byte-level BPE tokenizer
trained here on a few sentences. The weights are random, so the model babbles, but transformers
saves, loads, describes and generates with it exactly as with a big one.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|endoftext|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Quantization maps weights to a small grid; fine-tuning adapts them.",
    "Café, naïve, jalapeño, €5, 東京 and 😀 are multi-byte characters.",
    "What is the capital of France? Paris is the answer.",
]


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=SPECIAL_TOKENS[2:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(tokenizer, seed: int = 0, context: int = 256, tied: bool = False):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tied,  # tied: the LM head is the embedding matrix (as in SmolLM2)
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # A random model may pick EOS and stop at once. With a zero row a special token's logit
        # is 0 while ~300 others are random around 0, so greedy decoding never picks it.
        for token_id in tokenizer.all_special_ids:
            model.lm_head.weight[token_id].zero_()
    return model.eval()


def save_tiny_model(folder: Path) -> Path:
    """A tiny model with a long context, so that an answer runs long enough to be cancelled."""
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, context=4096).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_pickle_only_model(folder: Path) -> Path:
    """The same model with its weights only in pytorch_model.bin (a pickle file)."""
    import torch

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer)
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


# -- GGUF ----------------------------------------------------------------------------------------
def _permute_for_rope(weight, n_head: int):
    # llama.cpp stores Q and K rows interleaved for its RoPE; transformers undoes this on load.
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _write_gguf_tokenizer(writer, tokenizer) -> None:
    import json

    vocab = tokenizer.backend_tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = set(tokenizer.all_special_ids)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])  # 3: control
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)


def write_tiny_gguf(model, tokenizer, path: Path) -> Path:
    """Write a Llama model and its tokenizer as an F32 GGUF file, the way llama.cpp lays it out."""
    import gguf
    import numpy as np

    c = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    _write_gguf_tokenizer(writer, tokenizer)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    names = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        names |= {
            f"blk.{i}.attn_norm": p + "input_layernorm",
            f"blk.{i}.attn_q": p + "self_attn.q_proj",
            f"blk.{i}.attn_k": p + "self_attn.k_proj",
            f"blk.{i}.attn_v": p + "self_attn.v_proj",
            f"blk.{i}.attn_output": p + "self_attn.o_proj",
            f"blk.{i}.ffn_norm": p + "post_attention_layernorm",
            f"blk.{i}.ffn_gate": p + "mlp.gate_proj",
            f"blk.{i}.ffn_up": p + "mlp.up_proj",
            f"blk.{i}.ffn_down": p + "mlp.down_proj",
        }
    for gguf_name, hf_name in names.items():
        weight = sd[hf_name + ".weight"]
        if gguf_name.endswith("attn_q"):
            weight = _permute_for_rope(weight, c.num_attention_heads)
        elif gguf_name.endswith("attn_k"):
            weight = _permute_for_rope(weight, c.num_key_value_heads)
        writer.add_tensor(gguf_name + ".weight", weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
