"""The model card: parameter count, shape, memory table, read off a real (tiny) model."""

import pytest

from core.models.card import card_from_model, memory_by_precision
from core.models.sources import ModelRef

from .conftest import build_tiny_model


def test_memory_table_for_a_round_number():
    # 6400 parameters = 100 groups of 64, one fp16 scale (2 bytes) per group.
    assert memory_by_precision(6400) == {
        "FP32": 25600,
        "FP16": 12800,
        "BF16": 12800,
        "INT8": 6400 + 200,
        "INT4": 3200 + 200,
    }


def test_memory_table_rounds_partial_groups_and_odd_counts_up():
    table = memory_by_precision(65)
    assert table["INT8"] == 65 + 2 * 2
    assert table["INT4"] == 33 + 2 * 2


@pytest.fixture
def tiny_card(tiny_loaded):
    return tiny_loaded.card


def test_card_counts_every_parameter_once(tiny_loaded, tiny_card):
    model = tiny_loaded.model
    assert tiny_card.parameters == sum(p.numel() for p in model.parameters())
    assert tiny_card.memory_bytes == memory_by_precision(tiny_card.parameters)
    assert tiny_card.memory_bytes["FP32"] == 4 * tiny_card.parameters


def test_card_reads_the_shape(tiny_loaded, tiny_card, tiny_model_dir):
    assert tiny_card.architecture == "LlamaForCausalLM"
    assert tiny_card.model_type == "llama"
    assert (tiny_card.layers, tiny_card.hidden_size, tiny_card.context_length) == (2, 32, 256)
    assert tiny_card.vocab_size == len(tiny_loaded.tokenizer)
    assert tiny_card.dtype == "float32"
    assert tiny_card.device == "cpu"
    assert tiny_card.tied_embeddings is False
    assert "<|assistant|>" in tiny_card.chat_template
    assert tiny_card.size_on_disk_bytes == sum(p.stat().st_size for p in tiny_model_dir.iterdir())
    assert tiny_card.source["kind"] == "folder" and tiny_card.source["folder"] == str(tiny_model_dir)
    assert tiny_card.to_dict()["memory_bytes"]["INT4"] < tiny_card.to_dict()["memory_bytes"]["INT8"]


def test_tied_embeddings_are_detected_and_counted_once(tiny_tokenizer, tmp_path):
    model = build_tiny_model(tiny_tokenizer)
    untied = sum(p.numel() for p in model.parameters())
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    card = card_from_model(model, tiny_tokenizer, ModelRef("folder", str(tmp_path), "t"), tmp_path, "cpu")
    assert card.tied_embeddings is True
    assert card.parameters == untied - model.lm_head.weight.numel()
