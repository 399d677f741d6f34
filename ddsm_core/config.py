"""A run's settings: the command-line arguments, their checks, and what the run's config file holds.

Everything is checked before any work starts, so a typo (the seed's learning
rate of 1.1111) is refused in one sentence instead of diverging for hours.
"""
from __future__ import annotations

import argparse
import secrets
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from . import hardware
from .errors import UserError
from .models import BACKBONES, get_backbone, resolve_weights
from .tasks import get_task

STRATEGIES = ("default", "mirrored", "multiworker")
# auto: bfloat16 only where the CPU runs it natively, mixed float16 on a GPU, float32 elsewhere (ddsm_core.hardware)
PRECISIONS = (hardware.AUTO, *hardware.PRECISIONS)
MONITORS = {"val_accuracy": "max", "val_loss": "min"}
REVIEWS = ("ignore", "apply")
SHUFFLE_BUFFER = 4096  # training patches shuffled among (held decoded in memory: the memory estimate counts them)
# learning rates when --lr is not given: a network trained from scratch, or a head on frozen features, needs a
# larger step than fine-tuning pretrained weights (1e-4 learned nothing on a from-scratch small_cnn in 8 epochs)
LR_FROM_SCRATCH, LR_FINE_TUNE = 1e-3, 1e-4


@dataclass
class RunConfig:
    dataset: str
    task: int
    backbone: str
    epochs: int = 10
    image_size: int = 128
    batch_size: int = 32
    lr: float | None = None  # None: default_lr()
    weights: str = "none"
    fine_tune: str = "full"
    dropout: float = 0.0
    augment: bool = False
    class_weights: str = "balanced"
    monitor: str = "val_accuracy"
    seed: int = 42
    val_fraction: float = 0.2
    cache: bool = False
    strategy: str = "default"
    precision: str = "auto"
    jit: bool = False
    feature_cache: bool = True  # head runs train on cached backbone features (ddsm_core.features)
    reduce_lr_patience: int = 0  # halve the learning rate after this many epochs without improvement (0: off)
    early_stop_patience: int = 0  # stop after this many epochs without improvement (0: off)
    reviews: str = "ignore"  # apply: train on the radiologists' verdicts (relabels, exclusions)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--dataset", help="dataset name in the workspace")
    add("--task", type=int, help="task 0-5 (see README)")
    add("--backbone", help=f"one of {', '.join(BACKBONES)}")
    add("--epochs", type=int, default=10)
    add("--image-size", type=int, default=128)
    add("--batch-size", type=int, default=32)
    add("--lr", type=float, default=None,
        help=f"learning rate (default: {LR_FROM_SCRATCH:g} from scratch or for a head, {LR_FINE_TUNE:g} to fine-tune "
             "pretrained weights)")
    add("--weights", default="none", help="none, imagenet (from the Keras cache) or a path to a weights file")
    add("--fine-tune", choices=["full", "head"], default="full",
        help="full: train every layer; head: freeze the backbone and train the classifier on cached features")
    add("--no-feature-cache", dest="feature_cache", action="store_false",
        help="head runs: run every patch through the frozen backbone each epoch instead (slow; allows --augment)")
    add("--dropout", type=float, default=0.0)
    add("--augment", action="store_true", help="flips, small rotations and contrast on training patches")
    add("--class-weights", choices=["balanced", "none"], default="balanced")
    add("--monitor", choices=list(MONITORS), default="val_accuracy")
    add("--seed", type=int, default=42)
    add("--val-fraction", type=float, default=0.2)
    add("--cache", action="store_true", help="keep decoded patches (8-bit) in memory after the first epoch")
    add("--strategy", choices=STRATEGIES, default="default")
    add("--precision", choices=PRECISIONS, default="auto")
    add("--reduce-lr-patience", type=int, default=0, metavar="EPOCHS",
        help="halve the learning rate after this many epochs without improvement of --monitor (0: off)")
    add("--early-stop-patience", type=int, default=0, metavar="EPOCHS",
        help="stop after this many epochs without improvement of --monitor (0: off)")
    add("--reviews", choices=REVIEWS, default="ignore",
        help="apply: relabeled training patches train with their new label, excluded ones are left out")
    add("--jit", action="store_true", help="compile with XLA")
    add("--resume", metavar="RUN_ID", help="continue a killed or cancelled run")
    add("--run-id", help="name the new run (every worker of a multi-worker run passes the same one)")
    add("--no-evaluate", action="store_true", help="do not evaluate the test split when training ends")


def config_from_args(args) -> RunConfig:
    missing = [flag for flag, value in (("--dataset", args.dataset), ("--task", args.task),
                                        ("--backbone", args.backbone)) if value is None]
    if missing:
        raise UserError(f"train needs {', '.join(missing)} (or --resume RUN_ID)")
    names = {f.name for f in fields(RunConfig)}
    return RunConfig(**{name: getattr(args, name) for name in names if hasattr(args, name)})


def check_settings(config: RunConfig) -> list[str]:
    """Problems with the settings alone (no dataset needed), one sentence each."""
    problems = []
    if config.lr is not None and not 0 < config.lr < 1:
        problems.append(f"learning rate {config.lr} is outside (0, 1): typical values are 1e-4 to 1e-2")
    if config.epochs < 1:
        problems.append(f"epochs must be a positive whole number, not {config.epochs}")
    if config.batch_size < 1:
        problems.append(f"batch size must be a positive whole number, not {config.batch_size}")
    if config.image_size < 32:
        problems.append(f"image size {config.image_size} is too small: use at least 32 pixels")
    if not 0 < config.val_fraction <= 0.5:
        problems.append(f"validation fraction {config.val_fraction} must be in (0, 0.5]")
    if not 0 <= config.dropout < 1:
        problems.append(f"dropout {config.dropout} must be in [0, 1)")
    for name in ("reduce_lr_patience", "early_stop_patience"):
        if getattr(config, name) < 0:
            problems.append(f"{name.replace('_', ' ')} must be 0 (off) or a positive number of epochs")
    if config.precision not in PRECISIONS:
        problems.append(f"unknown precision {config.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if config.reviews not in REVIEWS:
        problems.append(f"unknown reviews mode {config.reviews!r}: use ignore or apply")
    if uses_feature_cache(config) and config.augment:
        problems.append("augmentation cannot apply to cached features: drop --augment, or add --no-feature-cache "
                        "to run every patch through the frozen backbone in every epoch (much slower)")
    if uses_feature_cache(config) and config.strategy != "default":
        problems.append("head runs on cached features train on one machine: use --strategy default, "
                        "or add --no-feature-cache")
    for check in (lambda: get_task(config.task), lambda: get_backbone(config.backbone)):
        try:
            check()
        except UserError as error:
            problems += error.problems
    if config.backbone in BACKBONES and not problems:
        try:
            resolve_weights(get_backbone(config.backbone), config.weights)
        except UserError as error:
            problems += error.problems
    return problems


def uses_feature_cache(config: RunConfig) -> bool:
    """A frozen backbone gives every patch the same features in every epoch: compute them once."""
    return config.fine_tune == "head" and config.feature_cache


def default_lr(config: RunConfig) -> float:
    pretrained_fine_tune = config.weights != "none" and config.fine_tune == "full"
    return LR_FINE_TUNE if pretrained_fine_tune else LR_FROM_SCRATCH


def resolved(config: RunConfig, precision: str) -> dict:
    """What a new run's config file records: the settings with the learning rate and precision decided
    (`precision` is what ddsm_core.hardware chose for the requested one on this machine)."""
    return config.to_dict() | {
        "lr": default_lr(config) if config.lr is None else config.lr, "lr_default": config.lr is None,
        "precision": precision, "precision_requested": config.precision,
    }


def check_dataset(config: RunConfig, manifest) -> list[str]:
    """Can the dataset serve the task? Every class needs training patches."""
    task = get_task(config.task)
    missing = task.missing_classes(manifest, "train")
    if missing:
        return [f"dataset {config.dataset!r} cannot serve task {task.id} ({task.name}): "
                f"no training patches of {', '.join(missing)}"]
    return []


def new_run_id(config: RunConfig) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{config.dataset}-t{config.task}-{config.backbone}-{secrets.token_hex(2)}"


def validate_run_id(run_id: str) -> str:
    if not run_id or "/" in run_id or run_id.startswith(".") or Path(run_id).name != run_id:
        raise UserError(f"run id {run_id!r} is not a valid folder name")
    return run_id
