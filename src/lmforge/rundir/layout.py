"""Every file name inside a run directory, defined once.

A run directory is what `pretrain`, `finetune`, `compress` and `import hf` write and what every
command that reads a model takes:

    config.json            the resolved config (--resume and load_run read only this)
    tokenizer.json         the tokenizer the model was trained with
    model.safetensors      the newest weights (a classifier: its best epoch's)
    adapter.safetensors    LoRA adapters only, with adapter_config.json naming the base run
    metrics.jsonl, loss.png                  training and evaluation records, and their plot
    trainer_state/state.safetensors, state.json   progress, optimizer and RNG state, newest step
    checkpoints/step_NNNNNNN/                the last train.keep_last complete checkpoints
    best/                  the weights of the best evaluation (train.best_metric)
    labels.json · tasks.json · confusion_matrix.png    classifiers
    chat_template.jinja    the chat template (special_tokens.json: its bos/eos tokens); runs made
                           before hold chat_template.json, converted when loaded
    quantization.json + model.int8.safetensors · pruning.json · distillation.json   compressed

Beside it, not in it, `.NAME.lock` marks the run directory NAME as being written (rundir/lock.py):
--overwrite and staged writes replace the directory itself, never the lock.
"""

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
MODEL_FILE = "model.safetensors"
ADAPTER_FILE = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
NEAR_DUPLICATES_SAMPLE = "near_duplicates.jsonl"  # prepare --near-dedup: removed examples
LOGGER_DIR = "logs"  # train.logger's files: logs/tensorboard (event files), logs/wandb
STATE_DIR = "trainer_state"
STATE_FILE = "state.safetensors"  # tensors, and the rest as JSON in its header metadata
LEGACY_STATE_FILE = "state.pt"  # runs made before: still resumed (weights_only=True)
STATE_JSON = "state.json"
OPTIMIZER_DIR = "optimizer"
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
LABELS_FILE = "labels.json"
TASKS_FILE = "tasks.json"
CONFUSION_PLOT = "confusion_matrix.png"
CHAT_TEMPLATE = "chat_template.jinja"  # the Jinja chat template (as transformers saves it)
SPECIAL_TOKENS_FILE = "special_tokens.json"  # bos_token / eos_token the template may name
CHAT_TEMPLATE_FILE = "chat_template.json"  # older runs' template (a format string): still read
QUANTIZATION_FILE = "quantization.json"
QUANTIZED_WEIGHTS = "model.int8.safetensors"
PRUNING_FILE = "pruning.json"
DISTILLATION_FILE = "distillation.json"  # a distilled student's teacher, T and alpha


def lock_name(run_name: str) -> str:
    """The lock file beside run directory run_name: `.run_name.lock`."""
    return f".{run_name}.lock"


def checkpoint_name(step: int) -> str:
    """checkpoints/step_0000120: zero-padded so that names sort by step."""
    return f"step_{step:07d}"
