"""Training: one Trainer for pretraining and every fine-tune, plus objectives and optimiser."""
