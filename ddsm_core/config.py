"""A run's settings: the command-line arguments, their checks, and config.json.

Everything is checked before any work starts, so a typo (the seed's learning
rate of 1.1111) is refused in one sentence instead of diverging for hours.
"""
from __future__ import annotations

import argparse
import secrets
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

from .errors import UserError
from .models import BACKBONES, get_backbone, resolve_weights
from .tasks import get_task

STRATEGIES = ("default", "mirrored", "multiworker")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
MONITORS = {"val_accuracy": "max", "val_loss": "min"}


@dataclass
class RunConfig:
    dataset: str
    task: int
    backbone: str
    epochs: int = 10
    image_size: int = 128
    batch_size: int = 32
    lr: float = 1e-4
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
    precision: str = "float32"
    jit: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
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
    add("--lr", type=float, default=1e-4)
    add("--weights", default="none", help="none, imagenet (from the Keras cache) or a path to a weights file")
    add("--fine-tune", choices=["full", "head"], default="full")
    add("--dropout", type=float, default=0.0)
    add("--augment", action="store_true", help="flips, small rotations and contrast on training patches")
    add("--class-weights", choices=["balanced", "none"], default="balanced")
    add("--monitor", choices=list(MONITORS), default="val_accuracy")
    add("--seed", type=int, default=42)
    add("--val-fraction", type=float, default=0.2)
    add("--cache", action="store_true", help="keep decoded patches in memory after the first epoch")
    add("--strategy", choices=STRATEGIES, default="default")
    add("--precision", choices=PRECISIONS, default="float32")
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
    if not 0 < config.lr < 1:
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


def check_dataset(config: RunConfig, manifest) -> list[str]:
    """Can the dataset serve the task? Every class needs training patches."""
    task = get_task(config.task)
    missing = task.missing_classes(manifest, "train")
    if missing:
        return [f"dataset {config.dataset!r} cannot serve task {task.id} ({task.name}): "
                f"no training patches of {', '.join(missing)}"]
    return []


def new_run_id(config: RunConfig) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{config.dataset}-t{config.task}-{config.backbone}-{secrets.token_hex(2)}"


def validate_run_id(run_id: str) -> str:
    if not run_id or "/" in run_id or run_id.startswith(".") or Path(run_id).name != run_id:
        raise UserError(f"run id {run_id!r} is not a valid folder name")
    return run_id
