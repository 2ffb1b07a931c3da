"""The training objectives and the figures read from them, against their formulas written out:

causal LM      L = −(1/N) Σ_i ln P(w_i | w_<i),  P = softmax(logits)
masked LM      L = −(1/|M|) Σ_{i∈M} ln P(w_i | x̃)   (M: the masked positions)
perplexity     PPL = exp(L)          bits per byte = Σ −ln P / (bytes · ln 2)
"""

import math

import torch
from tests.train.test_objectives import _mlm_batch

from lmforge.config import ModelConfig
from lmforge.data.batches import IGNORE_INDEX, Batch, clm_batch
from lmforge.evaluate import bits_per_byte, perplexity_from_nll, score_text
from lmforge.model import BERT, GPT
from lmforge.train.objectives import clm_loss, mlm_loss


def log_softmax_by_hand(logits: list[float]) -> list[float]:
    """ln softmax(z)_j = z_j − ln Σ_k e^(z_k), with the max subtracted first for stability."""
    top = max(logits)
    log_total = top + math.log(sum(math.exp(z - top) for z in logits))
    return [z - log_total for z in logits]


def mean_nll_by_hand(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """−(1/N) Σ ln softmax(logits_i)[target_i] over every target that is not −100."""
    total, count = 0.0, 0
    rows = logits.reshape(-1, logits.shape[-1]).tolist()
    for row, target in zip(rows, targets.reshape(-1), strict=True):
        if int(target) == IGNORE_INDEX:
            continue
        total -= log_softmax_by_hand(row)[int(target)]
        count += 1
    return total / count


def _gpt(tie: bool = True) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=12, vocab_size=31, tie_weights=tie)
    return GPT(cfg).eval()


def test_the_causal_lm_loss_is_the_mean_negative_log_likelihood() -> None:
    """clm_loss (head and softmax fused chunk by chunk) equals −(1/N) Σ ln P(w_i | w_<i) from
    the model's own logits, computed one position at a time."""
    model = _gpt()
    windows = torch.randint(0, 31, (3, 13), generator=torch.Generator().manual_seed(1))
    batch = clm_batch(windows.clone())
    batch.targets[0, :4] = IGNORE_INDEX  # e.g. prompt tokens that are not scored
    batch = Batch(inputs=windows[:, :-1], targets=batch.targets)  # targets view a copy
    with torch.no_grad():
        logits = model(batch.inputs)
        loss = clm_loss(model, batch)
    assert math.isclose(float(loss), mean_nll_by_hand(logits, batch.targets), rel_tol=1e-5)


def test_the_likelihood_is_a_product_of_next_token_probabilities() -> None:
    """ln P(w_1 … w_n | w_0) = Σ_i ln P(w_i | w_<i): scoring the sequence at once equals
    scoring each prefix separately and keeping its last prediction (causality)."""
    model = _gpt(tie=False)
    ids = torch.randint(0, 31, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = torch.log_softmax(model(ids[:, :-1]), dim=-1)[0]  # (8, V)
        joint = sum(float(whole[i, ids[0, i + 1]]) for i in range(8))
        one_by_one = 0.0
        for i in range(8):
            prefix_logits = model(ids[:, : i + 1])[0, -1]
            one_by_one += log_softmax_by_hand(prefix_logits.tolist())[int(ids[0, i + 1])]
    assert math.isclose(joint, one_by_one, rel_tol=1e-5)


def test_the_masked_lm_loss_averages_over_masked_positions_only() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="bert", n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=97)
    model = BERT(cfg).eval()
    batch = _mlm_batch(seed=3)
    with torch.no_grad():
        logits = model(batch.inputs, batch.token_types, batch.attention_mask).mlm
        loss = mlm_loss(model, batch)
    assert math.isclose(float(loss), mean_nll_by_hand(logits, batch.targets), rel_tol=1e-5)


def test_perplexity_and_bits_per_byte_by_hand() -> None:
    """A model that gives every token probability 1/4 has perplexity 4; over 12 tokens of a
    text of 24 bytes it spends 12·2 bits = 24 bits, i.e. 1 bit per byte."""
    nll = -math.log(1 / 4)
    assert math.isclose(perplexity_from_nll(nll), 4.0)
    assert math.isclose(bits_per_byte(12 * nll, 24), 1.0)
    assert perplexity_from_nll(1e6) == math.exp(700)  # capped, not an OverflowError


def test_score_text_reports_figures_consistent_with_its_token_losses() -> None:
    """score_text: perplexity = exp(mean NLL) and bits per byte = total NLL / (bytes·ln 2),
    the NLL being the model's own next-token losses."""
    model = _gpt()
    ids = torch.randint(0, 31, (12,), generator=torch.Generator().manual_seed(4)).tolist()
    score = score_text(model, ids, n_bytes=40, window=12)
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]))
    mean = mean_nll_by_hand(logits, torch.tensor([ids[1:]]))
    assert math.isclose(score.loss, mean, rel_tol=1e-5)
    assert math.isclose(score.perplexity, math.exp(mean), rel_tol=1e-5)
    assert math.isclose(score.bits_per_byte, mean * 11 / (40 * math.log(2)), rel_tol=1e-5)
