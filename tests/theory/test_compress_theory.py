"""int8 absmax quantization against its formula, entry by entry:
s_o = max_i |w_o,i| / 127 for each output row o,  q_o,i = round(w_o,i / s_o) ∈ [−127, 127],
and the weight the layer then computes with is q·s. (LoRA's W + (α/r)BA and distillation's
T²·KL have their transcriptions in tests/model/test_lora.py and tests/compress/test_distill.py.)
"""

import torch

from lmforge.compress.quantize import int8_per_channel


def absmax_by_hand(row: list[float]) -> tuple[list[int], float]:
    scale = max(abs(w) for w in row) / 127
    return [max(-127, min(127, round(w / scale))) for w in row], scale


def test_int8_absmax_matches_the_formula_entry_by_entry() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 10, generator=g) * torch.tensor([1e-3, 0.1, 1, 3, 10, 50])[:, None]
    q, scale = int8_per_channel(w)
    for o, row in enumerate(w.tolist()):
        expected_q, expected_scale = absmax_by_hand(row)
        assert abs(float(scale[o]) - expected_scale) <= 1e-6 * expected_scale
        assert q[o].tolist() == expected_q  # random weights: no w/s lands on a .5 boundary
    dequantized = q.float() * scale[:, None]
    assert float((dequantized - w).abs().max() / w.abs().max()) < 1 / 127
