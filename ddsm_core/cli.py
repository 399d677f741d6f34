"""python -m ddsm_core <command> (a contract: other tools call these).

User errors print one sentence per problem, no traceback, and exit 1.
Heavy modules (TensorFlow) are imported inside the commands that need them.
"""
from __future__ import annotations

import argparse
import json
import sys

from . import workspace
from .errors import UserError


def _import_seed_csv(args):
    from .data.seed_csv import import_seed_csv

    dataset = import_seed_csv(args.workspace, args.name, args.train_csv, args.train_images,
                              args.test_csv, args.test_images, skip_bad=args.skip_bad, replace=args.replace)
    _report_import(dataset)


def _import_kaggle(args):
    from .data.kaggle import import_kaggle

    dataset = import_kaggle(args.workspace, args.name, args.source, skip_bad=args.skip_bad, replace=args.replace)
    _report_import(dataset)


def _report_import(dataset):
    report = dataset.info["import_report"]
    print(f"imported {dataset.info['n_patches']} patches as dataset {dataset.name!r} into {dataset.folder}")
    for split, counts in dataset.info["counts"].items():
        print(f"  {split}: " + ", ".join(f"class {label}: {n}" for label, n in counts.items()))
    for entry in report["skipped"]:
        print(f"  skipped {entry['where']}: {entry['file']}: {entry['reason']}")
    for warning in report["warnings"]:
        print(f"  note: {warning}")


def _datasets(args):
    from .data import store

    summaries = store.summaries(workspace.workspace_root(args.workspace))
    if args.json:
        print(json.dumps(summaries, indent=2))
        return
    if not summaries:
        print("no datasets yet: import one (python -m ddsm_core import ...) or build the demo (python -m ddsm_core demo)")
    for entry in summaries:
        totals = {split: sum(counts.values()) for split, counts in entry["counts"].items()}
        print(f"{entry['name']}  {entry['format']}  train {totals['train']}  test {totals['test']}")


def _synth(args):
    from .data import synth

    truth = synth.write(args.out, args.format, args.n_train, args.n_test, size=args.size, seed=args.seed)
    print(f"wrote {len(truth)} synthetic patches ({args.format} layout) to {args.out}")


def _train(args):
    from . import training

    run_id = training.train_from_args(args)
    print(run_id)


def _evaluate(args):
    from . import evaluation

    result = evaluation.evaluate_run(workspace.workspace_root(args.workspace), args.run, split=args.split,
                                     checkpoint=args.checkpoint, batch_size=args.batch_size,
                                     precision=args.precision, jit=args.jit, log=print)
    print(json.dumps({k: result.metrics.get(k) for k in ("accuracy", "balanced_accuracy", "roc_auc", "ece")}))


def _runs(args):
    from . import runs

    records = runs.list_runs(workspace.workspace_root(args.workspace))
    if args.json:
        print(json.dumps(records, indent=2, default=str))
        return
    if not records:
        print("no runs yet: train one (python -m ddsm_core train ...) or build the demo (python -m ddsm_core demo)")
    for record in records:
        print(runs.one_line(record))


def _cancel(args):
    from . import jobs

    print(jobs.cancel(workspace.workspace_root(args.workspace), args.run))


def _demo(args):
    from . import demo

    demo.run_demo(workspace.workspace_root(args.workspace), n_train=args.n_train, n_test=args.n_test,
                  image_size=args.image_size, epochs=args.epochs, if_empty=args.if_empty)


def _worker(args):
    from . import jobs

    jobs.work(workspace.workspace_root(args.workspace), args.run)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", default=None,
                        help="workspace folder (default: $DDSM_WORKSPACE or ./artifacts)")
    parser = argparse.ArgumentParser(prog="python -m ddsm_core", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    importer = commands.add_parser("import", help="import a dataset").add_subparsers(dest="format", required=True)
    seed = importer.add_parser("seed-csv", parents=[common], help="CSV (filename,y) + image folder per split")
    seed.add_argument("--name", required=True)
    for split in ("train", "test"):
        seed.add_argument(f"--{split}-csv", required=True)
        seed.add_argument(f"--{split}-images", required=True)
    kaggle = importer.add_parser("kaggle", parents=[common], help="the public DDSM patch release (tfrecords + npy)")
    kaggle.add_argument("--name", required=True)
    kaggle.add_argument("--source", required=True)
    for sub in (seed, kaggle):
        sub.add_argument("--skip-bad", action="store_true", help="import the good rows, record the bad ones")
        sub.add_argument("--replace", action="store_true", help="replace an existing dataset of that name")
    seed.set_defaults(handler=_import_seed_csv)
    kaggle.set_defaults(handler=_import_kaggle)

    datasets = commands.add_parser("datasets", parents=[common], help="list datasets")
    datasets.add_argument("--json", action="store_true")
    datasets.set_defaults(handler=_datasets)

    synth = commands.add_parser("synth", help="write a synthetic DDSM-like dataset in a source layout")
    synth.add_argument("--out", required=True)
    synth.add_argument("--format", choices=["seed-csv", "kaggle"], default="seed-csv")
    synth.add_argument("--n-train", type=int, default=600)
    synth.add_argument("--n-test", type=int, default=200)
    synth.add_argument("--size", type=int, default=128)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=_synth)

    from .config import add_train_arguments

    train = commands.add_parser("train", parents=[common], help="train one run; prints the run id last")
    add_train_arguments(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", parents=[common], help="predict a split and store metrics")
    evaluate.add_argument("--run", required=True)
    evaluate.add_argument("--split", choices=["test", "val", "train"], default="test")
    evaluate.add_argument("--checkpoint", choices=["best", "final"], default="best")
    evaluate.add_argument("--batch-size", type=int, default=None)
    evaluate.add_argument("--precision", choices=["float32", "mixed_bfloat16", "mixed_float16"], default="float32")
    evaluate.add_argument("--jit", action="store_true")
    evaluate.set_defaults(handler=_evaluate)

    runs = commands.add_parser("runs", parents=[common], help="list runs")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(handler=_runs)

    cancel = commands.add_parser("cancel", parents=[common], help="cancel a queued or running run")
    cancel.add_argument("--run", required=True)
    cancel.set_defaults(handler=_cancel)

    demo = commands.add_parser("demo", parents=[common], help="build the demo dataset and six trained runs")
    demo.add_argument("--n-train", type=int, default=None)
    demo.add_argument("--n-test", type=int, default=None)
    demo.add_argument("--image-size", type=int, default=None)
    demo.add_argument("--epochs", type=int, default=None)
    demo.add_argument("--if-empty", action="store_true", help="only when the workspace has no datasets or runs")
    demo.set_defaults(handler=_demo)

    worker = commands.add_parser("worker", parents=[common], help=argparse.SUPPRESS)
    worker.add_argument("--run", required=True)
    worker.set_defaults(handler=_worker)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except UserError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
