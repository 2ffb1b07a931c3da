"""The n-gram vocabulary of a new model with model.ngram_min_count, counted from its training
text (see `lmforge.model.layers.CountedNgramEmbedding`)."""

import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from lmforge.config import RunConfig
from lmforge.data.sources import open_data
from lmforge.model.layers import CountedNgramEmbedding

log = logging.getLogger(__name__)

CHUNK_TOKENS = 1 << 22  # n-grams are counted in pieces of this many tokens (4M)


def fit_ngram_vocabulary(model: nn.Module, cfg: RunConfig) -> None:
    """Count the n-grams of data.dir's train split into the model's vocabulary; a no-op for a
    model without counted n-gram embeddings. N-grams across a piece's edge are not counted."""
    body = getattr(model, "body", model)
    table = getattr(body, "ngram_emb", None)
    if not isinstance(table, CountedNgramEmbedding):
        return
    shards, _ = open_data(cfg)
    kept = table.fit(_pieces(shards.arrays["train"]), cfg.model.ngram_min_count)
    rows = cfg.model.ngram_buckets
    log.info(
        "n-gram vocabulary: %d n-grams (orders 2-%d) seen >= %d times in the train split, in "
        "%d rows",
        kept,
        cfg.model.ngram_n,
        cfg.model.ngram_min_count,
        rows,
    )
    if kept == 0:
        log.warning(
            "warning: no n-gram occurs model.ngram_min_count=%d times in the train split; "
            "every n-gram shares one row (lower model.ngram_min_count)",
            cfg.model.ngram_min_count,
        )


def _pieces(arrays: list[np.ndarray]) -> Iterator[torch.Tensor]:
    for array in arrays:
        for start in range(0, len(array), CHUNK_TOKENS):
            yield torch.from_numpy(np.asarray(array[start : start + CHUNK_TOKENS], np.int64))
