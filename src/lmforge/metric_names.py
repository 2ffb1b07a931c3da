"""The validation metrics each training objective reports, and which way each improves."""

from collections.abc import Mapping
from types import MappingProxyType

# Validation metrics each objective reports (the eval records in metrics.jsonl).
# val_mlm_hidden_accuracy: on the masked tokens the input does not show ([MASK] or random), so
# copying the 10% left visible earns nothing.
_MLM = ("val_loss", "val_mlm_loss", "val_mlm_accuracy", "val_mlm_hidden_accuracy")
_CLASSIFY = ("val_loss", "val_accuracy", "val_macro_f1", "val_macro_precision", "val_macro_recall")
OBJECTIVES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "clm": ("val_loss", "val_ppl"),
        "mlm": _MLM,
        "mlm+nsp": (*_MLM, "val_nsp_loss", "val_nsp_accuracy"),
        "classify": _CLASSIFY,
    }
)


def higher_is_better(metric: str) -> bool:
    """Accuracies, F1, precision and recall improve upwards; losses and perplexity downwards."""
    return metric.endswith(("accuracy", "f1", "precision", "recall"))
