"""python -m ddsm_core <command> (a contract: other tools call these).

User errors print one sentence per problem, no traceback, and exit 1.
Heavy modules (TensorFlow) are imported inside the commands that need them.
"""
from __future__ import annotations

import argparse
import json
import sys

from . import runs, workspace
from .config import PRECISIONS, add_train_arguments
from .data import store
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


def _import_cbis(args):
    from .data.cbis import import_cbis

    dataset = import_cbis(args.workspace, args.name, args.source, patch_size=args.patch_size,
                          normals_per_image=args.normals_per_image, skip_bad=args.skip_bad, replace_existing=args.replace)
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
    from . import synth

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
                                     precision=args.precision, jit=args.jit, force=args.force, log=print)
    print(json.dumps({k: result.metrics.get(k) for k in ("accuracy", "balanced_accuracy", "roc_auc", "ece")}))


def _runs(args):
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


def _features(args):
    from . import features
    from .hardware import human_bytes

    root = workspace.workspace_root(args.workspace)
    if args.action == "remove":
        if not args.names and not args.stale:
            raise UserError("features remove needs cache names (see: features list) or --stale")
        for name in features.remove(root, args.names, stale=args.stale):
            print(f"removed feature cache {name}")
        return
    entries = features.list_caches(root)
    if args.json:
        print(json.dumps(entries, indent=2))
        return
    if not entries:
        print("no feature caches yet: a head run (train --fine-tune head) builds one")
    for entry in entries:
        print(f"{entry['name']}  {entry['n_patches']} patches x {entry['dim']}  {human_bytes(entry['bytes'])}"
              f"{'  STALE (dataset changed or removed)' if entry['stale'] else ''}")


def _review_add(args):
    from . import verdicts

    root = workspace.workspace_root(args.workspace)
    dataset = store.load(root, args.dataset)
    verdicts.require_patches(dataset.manifest, [args.filename], args.dataset)
    reviewer = args.reviewer if args.reviewer is not None else _login_name()
    stored = verdicts.add(root, args.dataset, args.filename, args.verdict, new_label=args.label,
                          note=args.note, reviewer=reviewer)
    label = f" (label {stored['new_label']})" if stored["new_label"] is not None else ""
    print(f"recorded {stored['verdict']}{label} for {stored['filename']} in dataset {args.dataset} "
          f"by {stored['reviewer']} at {stored['time']}")


def _login_name() -> str:
    """$USER (or LOGNAME, or the account name): who runs the command; empty when unknown."""
    import getpass

    try:
        return getpass.getuser()
    except OSError:
        return ""


def _review_export(args):
    from . import verdicts

    root = workspace.workspace_root(args.workspace)
    dataset = store.load(root, args.dataset)
    path = verdicts.export(root, args.dataset, dataset.manifest, args.out, history=args.history)
    count = len(verdicts.history(root, args.dataset) if args.history else verdicts.current(root, args.dataset))
    kind = "verdict(s) (the whole history)" if args.history else "current verdict(s)"
    print(f"wrote {count} {kind} of dataset {args.dataset} to {path}")


def _review_import(args):
    from . import verdicts

    root = workspace.workspace_root(args.workspace)
    dataset = store.load(root, args.dataset)
    added = verdicts.import_file(root, args.dataset, dataset.manifest, args.file)
    print(f"imported {added} new verdict(s) into dataset {args.dataset} from {args.file} "
          "(rows identical to stored ones are skipped)")


def _compare(args):
    from . import compare

    result = compare.compare_runs(workspace.workspace_root(args.workspace), *args.runs, split=args.split,
                                  n_boot=args.n_boot, seed=args.seed)
    print(json.dumps(result, indent=2) if args.json else compare.text_report(result))


def _explain(args):
    from pathlib import Path

    from . import explain

    names = list(args.filename or [])
    if args.filenames_file:
        try:
            text = Path(args.filenames_file).read_text(encoding="utf-8")
        except OSError as error:
            raise UserError(f"cannot read {args.filenames_file}: {error.strerror}") from None
        names += [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UserError("name the patches: --filename X (repeatable) or --filenames-file F (one per line)")
    explain.explain_many(workspace.workspace_root(args.workspace), args.run, names, split=args.split, log=print)


def _audit(args):
    from . import audit

    root = workspace.workspace_root(args.workspace)
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    result = audit.run_audit(root, args.dataset, run_id=args.run, force=args.force, log=say)
    if args.group_duplicates_into:
        made = audit.group_duplicates(root, args.dataset, args.group_duplicates_into, replace=args.replace)
        say(f"wrote dataset {made.name!r}: {args.dataset} with near-duplicate clusters merged into groups")
    if args.dedupe_into:
        made = audit.without_test_duplicates(root, args.dataset, args.dedupe_into, replace=args.replace)
        removed = made.info["source"]["derived_from"]["removed_train_patches"]
        say(f"wrote dataset {made.name!r}: {args.dataset} without the {removed} training patch(es) that duplicate test patches")
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(audit.summary_line(result))


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
    seed = importer.add_parser(store.SEED_CSV, parents=[common], help="CSV (filename,y) + image folder per split")
    seed.add_argument("--name", required=True)
    for split in store.SPLITS:
        seed.add_argument(f"--{split}-csv", required=True)
        seed.add_argument(f"--{split}-images", required=True)
    kaggle = importer.add_parser(store.KAGGLE, parents=[common], help="the public DDSM patch release (tfrecords + npy)")
    kaggle.add_argument("--name", required=True)
    kaggle.add_argument("--source", required=True)
    cbis = importer.add_parser(store.CBIS, parents=[common],
                               help="CBIS-DDSM (TCIA DICOM download or the JPEG re-release): patches cut from full mammograms")
    cbis.add_argument("--name", required=True)
    cbis.add_argument("--source", required=True, help="the folder holding CBIS-DDSM/ and the CSVs, or csv/ and jpeg/")
    cbis.add_argument("--patch-size", type=int, default=299, help="patch side in pixels (default 299)")
    cbis.add_argument("--normals-per-image", type=int, default=2, help="normal patches per full mammogram (default 2)")
    for sub in (seed, kaggle, cbis):
        sub.add_argument("--skip-bad", action="store_true", help="import the good rows, record the bad ones")
        sub.add_argument("--replace", action="store_true", help="replace an existing dataset of that name")
    seed.set_defaults(handler=_import_seed_csv)
    kaggle.set_defaults(handler=_import_kaggle)
    cbis.set_defaults(handler=_import_cbis)

    datasets = commands.add_parser("datasets", parents=[common], help="list datasets")
    datasets.add_argument("--json", action="store_true")
    datasets.set_defaults(handler=_datasets)

    synth = commands.add_parser("synth", help="write a synthetic DDSM-like dataset in a source layout")
    synth.add_argument("--out", required=True)
    synth.add_argument("--format", choices=store.PATCH_FORMATS, default=store.SEED_CSV)
    synth.add_argument("--n-train", type=int, default=600)
    synth.add_argument("--n-test", type=int, default=200)
    synth.add_argument("--size", type=int, default=128)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=_synth)

    train = commands.add_parser("train", parents=[common], help="train one run; prints the run id last")
    add_train_arguments(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", parents=[common], help="predict a split and store metrics")
    evaluate.add_argument("--run", required=True)
    evaluate.add_argument("--split", choices=runs.SPLITS, default="test")
    evaluate.add_argument("--checkpoint", choices=runs.CHECKPOINTS, default="best")
    evaluate.add_argument("--batch-size", type=int, default=None)
    evaluate.add_argument("--precision", choices=PRECISIONS, default=None,
                          help="default: the precision the run trained in")
    evaluate.add_argument("--jit", action="store_true")
    evaluate.add_argument("--force", action="store_true", help="predict again even when the stored predictions are current")
    evaluate.set_defaults(handler=_evaluate)

    listing = commands.add_parser("runs", parents=[common], help="list runs")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_runs)

    cancel = commands.add_parser("cancel", parents=[common], help="cancel a queued or running run")
    cancel.add_argument("--run", required=True)
    cancel.set_defaults(handler=_cancel)

    cached = commands.add_parser("features", parents=[common],
                                 help="list or remove the cached backbone features head runs train on")
    cached.add_argument("action", choices=["list", "remove"])
    cached.add_argument("names", nargs="*", help="caches to remove (names from features list)")
    cached.add_argument("--stale", action="store_true", help="remove every cache whose dataset changed or vanished")
    cached.add_argument("--json", action="store_true")
    cached.set_defaults(handler=_features)

    demo = commands.add_parser("demo", parents=[common], help="build the demo dataset and six trained runs")
    demo.add_argument("--n-train", type=int, default=None)
    demo.add_argument("--n-test", type=int, default=None)
    demo.add_argument("--image-size", type=int, default=None)
    demo.add_argument("--epochs", type=int, default=None)
    demo.add_argument("--if-empty", action="store_true", help="only when the workspace has no datasets or runs")
    demo.set_defaults(handler=_demo)

    review = commands.add_parser("review", help="verdicts on patches: add one, export, import") \
        .add_subparsers(dest="action", required=True)
    add = review.add_parser("add", parents=[common], help="record one verdict on a patch")
    add.add_argument("--dataset", required=True)
    add.add_argument("--filename", required=True, help="the patch's filename in the dataset")
    add.add_argument("--verdict", required=True, help="agree, relabel, exclude or unsure")
    add.add_argument("--label", default=None, help="relabel only: the correct source label 0-4")
    add.add_argument("--note", default="")
    add.add_argument("--reviewer", default=None, help="who gives the verdict (default: $USER)")
    add.set_defaults(handler=_review_add)
    export = review.add_parser("export", parents=[common], help="write the verdicts to a .csv or .parquet file")
    export.add_argument("--dataset", required=True)
    export.add_argument("--out", required=True, help="a .csv or .parquet file")
    export.add_argument("--history", action="store_true", help="every verdict ever given, not only the current ones")
    export.set_defaults(handler=_review_export)
    load = review.add_parser("import", parents=[common], help="add the verdicts of an exported file")
    load.add_argument("--dataset", required=True)
    load.add_argument("--file", required=True, help="a .csv or .parquet file with the export's columns")
    load.set_defaults(handler=_review_import)

    compared = commands.add_parser("compare", parents=[common],
                                   help="two runs on the test patches both predicted: metrics, CIs, disagreements")
    compared.add_argument("--runs", nargs=2, required=True, metavar=("A", "B"))
    compared.add_argument("--split", choices=runs.SPLITS, default="test")
    compared.add_argument("--n-boot", type=int, default=1000, help="paired bootstrap resamples (default 1000)")
    compared.add_argument("--seed", type=int, default=0)
    compared.add_argument("--json", action="store_true")
    compared.set_defaults(handler=_compare)

    explained = commands.add_parser("explain", parents=[common], help=argparse.SUPPRESS)  # the dashboard's Grad-CAM job
    explained.add_argument("--run", required=True)
    explained.add_argument("--split", choices=runs.SPLITS, default="test")
    explained.add_argument("--filename", action="append", help="a patch (repeatable)")
    explained.add_argument("--filenames-file", default=None, help="a text file, one patch filename per line")
    explained.set_defaults(handler=_explain)

    audited = commands.add_parser("audit", parents=[common],
                                  help="near-duplicates, likely label errors and shortcut signals of a dataset")
    audited.add_argument("--dataset", required=True)
    audited.add_argument("--run", default=None, help="also judge this run's test patches and set its AUC beside the probe")
    audited.add_argument("--json", action="store_true")
    audited.add_argument("--force", action="store_true", help="recompute even when the stored audit is up to date")
    audited.add_argument("--group-duplicates-into", metavar="NEW", default=None,
                         help="write a copy of the dataset whose groups merge near-duplicate clusters")
    audited.add_argument("--dedupe-into", metavar="NEW", default=None,
                         help="write a copy without the training patches that duplicate test patches")
    audited.add_argument("--replace", action="store_true", help="replace an existing dataset named NEW")
    audited.set_defaults(handler=_audit)

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
    except OSError as error:  # a full disk, a read-only folder: every workspace write is atomic, so say so
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}: stopped; the files already in the workspace are unchanged",
              file=sys.stderr)
        return 1
    return 0
