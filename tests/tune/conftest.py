"""Fixtures for tune tests: tiny randomly initialised models and a small labelled project."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.labelled_project import make_project, synthetic_rows


def _tokenizer():
    from transformers import AutoTokenizer

    from thresher.assets import default_encoder_path

    return AutoTokenizer.from_pretrained(str(default_encoder_path()))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 1-layer slice of the shipped MiniLM encoder (its word embeddings + first layer), saved
    to a folder: fast on CPU and, unlike a random 32-wide BERT, it learns in a few steps."""
    from transformers import BertModel

    from thresher.assets import default_encoder_path

    path = tmp_path_factory.mktemp("tiny-bert")
    BertModel.from_pretrained(str(default_encoder_path()), num_hidden_layers=1).save_pretrained(
        path
    )
    _tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """A 2-layer random Llama (GQA) with the MiniLM word-piece tokenizer, [SEP] as eos."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    tok = _tokenizer()
    tok.eos_token = "[SEP]"
    config = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture()
def project(tmp_path) -> Path:
    return make_project(tmp_path / "proj", synthetic_rows(160, seed=1))
