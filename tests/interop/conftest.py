"""Hugging Face twins built offline: random-initialised models from small configs, saved locally."""

import pytest

from lmforge.tokenizer import Tokenizer

from .twins import CORPUS


@pytest.fixture(scope="session")
def bpe_tokenizer() -> Tokenizer:
    return Tokenizer.train_bpe(CORPUS, vocab_size=400)
