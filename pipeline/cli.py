"""The `medtfx` command line: synth, run, demo, compile, deploy, inventory, convert, predict.

A user mistake (missing input, unwritable output, bad setting, unreachable endpoint, wrong model
folder) is answered with one line on stderr naming the thing and the problem: exit code 2 for
usage, 1 for a failure while working; `medtfx --debug ...` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time


class UsageError(Exception):
    """A user mistake found before any work starts: one line on stderr, exit code 2."""


def _quiet_tensorflow() -> None:
    # TF's C++ start-up noise (CUDA plugin registration on a CPU machine) is not actionable;
    # Python-side errors still surface. Stage progress comes from pipeline/console.py.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from pipeline import console

    console.configure()


def _is_url(path: str) -> bool:
    return "://" in path  # gs://, s3://, dicomweb+https://: checked by whoever reads them


def check_input(path: str, what: str) -> None:
    """Raises UsageError unless the local file or folder `path` exists and is readable; `what`
    names it for the user ('--data', 'INPUT', ...)."""
    if _is_url(path):
        return
    if not os.path.exists(path):
        raise UsageError(f"{what} {path}: no such file or directory")
    if not os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0)):
        raise UsageError(f"{what} {path}: not readable (permission denied)")


def _file_in_the_way(path: str) -> str:
    """The nearest existing ancestor of `path` (itself included) when it is not a folder, else ''."""
    current = os.path.abspath(path)
    while not os.path.exists(current) and os.path.dirname(current) != current:
        current = os.path.dirname(current)
    return "" if os.path.isdir(current) else current


def check_output_dir(path: str, what: str) -> None:
    """Creates the local folder `path` if needed and proves it writable (a temporary file is made
    and removed), or raises UsageError naming `what` and the problem."""
    if _is_url(path):
        return
    blocking = _file_in_the_way(path)
    if blocking == os.path.abspath(path):
        raise UsageError(f"{what} {path}: exists and is not a folder")
    if blocking:
        raise UsageError(f"{what} {path}: cannot create the folder ({blocking} is a file)")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot create the folder ({exc.strerror or exc})") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"{what} {path}: not writable ({exc.strerror or exc})") from None


def check_output_file(path: str, what: str) -> None:
    """Creates the parent folder of the local file `path` if needed and proves the file can be
    written (an existing file is left untouched), or raises UsageError naming `what`."""
    if _is_url(path):
        return
    if os.path.isdir(path):
        raise UsageError(f"{what} {path}: is a folder, expected a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if _file_in_the_way(parent):
        raise UsageError(f"{what} {path}: cannot create its folder ({_file_in_the_way(parent)} is a file)")
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot create its folder ({exc.strerror or exc})") from None
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise UsageError(f"{what} {path}: not writable (permission denied)")
        return
    try:
        with open(path, "x"):
            pass
        os.remove(path)
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot be written ({exc.strerror or exc})") from None


def one_line(exc: BaseException) -> str:
    """'<ExceptionType>: <first line of its message>' (at most 300 characters) for the user."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _progress(label: str, unit: str = "case"):
    """A `progress(done, total)` callback: a bar with rate and ETA on a terminal's stderr, plain
    periodic lines otherwise (modules/progress.py)."""
    from modules import progress

    return progress.callback(label, unit)


def cmd_synth(args) -> int:
    check_output_dir(args.out_dir, "OUT_DIR")
    from pipeline.tools.phantoms import synthesize, synthesize_ct

    if args.kind == "ct":
        out = synthesize_ct(args.out_dir, n_cases=args.cases, seed=args.seed, progress=_progress("CT phantoms"))
        print(
            f"wrote {out['cases']} anisotropic CT phantoms (uint16 + intercept, organ + lesion): "
            f"Decathlon NIfTI in {out['decathlon']}"
        )
        return 0
    out = synthesize(
        args.out_dir, n_cases=args.cases, seed=args.seed, n_structures=args.structures, progress=_progress("phantoms")
    )
    print(f"wrote {out['cases']} phantoms: Decathlon NIfTI in {out['decathlon']}, DICOM series in {out['dicom']}")
    return 0


def _check_dicomweb_data(data: str) -> None:
    """A PACS dataset URL passes through the config unchanged (ImageExampleGen reads it); refuse
    one carrying credentials here, before it could reach pipeline metadata (exit code 2)."""
    from modules.io import dicomweb

    if dicomweb.is_dicomweb_url(data):
        try:
            dicomweb.parse_dataset_url(data)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)


def _config(args, **fields):
    """The configuration of run/plan/demo: --budget-minutes is planning.budget_minutes (validated
    like any setting, so 0 is refused rather than ignored)."""
    budget_minutes = getattr(args, "budget_minutes", None)
    budget = [f"planning.budget_minutes={budget_minutes}"] if budget_minutes is not None else []
    return make_config_or_exit(args, budget, **fields)


def _print_summary(summary: dict, elapsed: float) -> None:
    print("\n=== medtfx run summary ===")
    if "cases_ok" in summary:
        print(f"cases: {summary['cases_ok']} ingested, {summary['cases_quarantined']} quarantined")
    overall = summary.get("dice", {}).get("overall", {})
    for name in sorted(overall):
        print(f"{name:>14s} (eval split): {overall[name]:.4f}")
    for slice_name, values in sorted(summary.get("dice", {}).items()):
        if slice_name != "overall" and "mean_dice" in values:
            print(f"  mean_dice [{slice_name}]: {values['mean_dice']:.4f}")
    inventory_dir = os.path.dirname(summary.get("inventory", ""))
    inventory_png = os.path.join(inventory_dir, "inventory.png") if inventory_dir else ""
    for label, path in (
        ("dataset inventory", inventory_png if os.path.exists(inventory_png) else ""),
        ("evaluation report", summary.get("evaluation_summary")),
        ("HTML report", summary.get("report_html")),
        ("Dice plot", summary.get("dice_plot")),
        ("training curves", summary.get("training_curves")),
        ("Dice per case", summary.get("dice_per_case")),
        ("worst and best cases", summary.get("cases_best_worst")),
        ("preprocessing preview", summary.get("transform_preview")),
    ):
        if path:
            print(f"{label}: {path}")
    if summary.get("tensorboard"):
        print(f"TensorBoard: {summary['tensorboard']}")
    for label, key in (("plan", "plan"), ("dataset fingerprint", "fingerprint")):
        if summary.get(key):
            print(f"{label}: {summary[key]}")
    print(f"blessed: {summary.get('blessed')}")
    print(f"pushed to: {summary.get('pushed_to') or 'not pushed (model not blessed)'}")
    print(f"elapsed: {elapsed:.0f} s")


def _run(cfg) -> dict:
    from pipeline.runners import local

    start = time.time()
    local.run_local(cfg)
    summary = local.run_summary(cfg)
    summary["elapsed_s"] = round(time.time() - start, 1)
    _print_summary(summary, summary["elapsed_s"])
    with open(os.path.join(cfg.workdir, "run_summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    return summary


def cmd_run(args) -> int:
    # Every mistake a user can make is found here, before the pipeline starts.
    cfg = _config(args, data_root=args.data, workdir=args.workdir)
    _check_dicomweb_data(args.data)
    check_input(args.data, "--data")
    check_output_dir(args.workdir, "--workdir")
    _quiet_tensorflow()
    summary = _run(cfg)
    return 0 if summary.get("pushed_to") else 3


def cmd_plan(args) -> int:
    """Ingests and plans (nnU-Net's plan step) without training; writes the plan and prints it."""
    cfg = _config(args, data_root=args.data, workdir=args.workdir)
    _check_dicomweb_data(args.data)
    check_input(args.data, "--data")
    check_output_file(args.output, "--output")
    check_output_dir(args.workdir, "--workdir")
    _quiet_tensorflow()
    from components.dataset_planner import artifacts
    from modules.plan import planner
    from pipeline.pipeline import PLANNER_ID
    from pipeline.runners import local

    local.run_local(cfg, until=PLANNER_ID)
    latest = local.latest_artifacts(os.path.abspath(cfg.metadata_path))
    with open(os.path.join(latest["medtfx.Plan"].uri, artifacts.PLAN_FILE)) as fh:
        plan = json.load(fh)
    with open(args.output, "w") as fh:
        json.dump(plan, fh, indent=2)
    print(planner.describe(plan))
    fingerprint_md = os.path.join(latest["medtfx.DatasetFingerprint"].uri, "fingerprint.md")
    print(f"plan: {args.output}; fingerprint: {fingerprint_md}")
    return 0


def cmd_settings(args) -> int:
    from pipeline.config import describe_settings

    print(describe_settings())
    return 0


def make_config_or_exit(args, extra=(), **fields):
    """The configuration, or one line on stderr and exit code 2 for a bad setting."""
    from pipeline.config import ConfigError, make_config

    try:
        return make_config(list(extra) + list(args.set), args.config or None, **fields)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def cmd_demo(args) -> int:
    check_output_dir(args.workdir, "--workdir")
    _quiet_tensorflow()
    from pipeline.tools.phantoms import synthesize

    data_dir = os.path.join(args.workdir, "phantoms")
    start = time.time()
    if not os.path.exists(os.path.join(data_dir, "dicom")):
        synthesize(data_dir, n_cases=args.cases, seed=args.seed, progress=_progress("phantoms"))
    # The demo ingests the DICOM series (the harder reader); the Decathlon copy is for users.
    cfg = _config(args, data_root=os.path.join(data_dir, "dicom"), workdir=args.workdir)
    summary = _run(cfg)
    print(f"demo total (phantoms + pipeline): {time.time() - start:.0f} s")
    return 0 if summary.get("pushed_to") else 3


def cmd_compile(args) -> int:
    from pipeline.runners import kubeflow

    if args.runner != "kubeflow":
        print(f"unknown runner {args.runner}", file=sys.stderr)
        return 2
    check_output_file(args.output, "--output")
    if args.configmap:
        check_input(args.configmap, "--configmap")
    try:
        cfg = _kubeflow_config(args)
        written = kubeflow.compile_kubeflow(cfg, args.output, allow_placeholders=args.allow_placeholders)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "pipeline_job" in written:
        print(f"wrote TFX PipelineJob JSON (Vertex AI format) to {written['pipeline_job']}")
    print(f"wrote KFP package (pipeline spec + kubernetes platform spec) to {written['kfp_package']}")
    return 0


def _kubeflow_config(args):
    """Config for compile/deploy: ConfigMap keys (--configmap), then --set, then the flags."""
    from pipeline.config import make_config
    from pipeline.runners import kubeflow

    overrides = kubeflow.configmap_overrides(kubeflow.read_configmap(args.configmap)) if args.configmap else []
    overrides += args.set + ([f"beam_profile={args.beam_profile}"] if args.beam_profile else [])
    return make_config(overrides, args.config or None, **({"data_root": args.data} if args.data else {}))


def _endpoint_problem(exc: BaseException) -> str:
    """Why a KFP API call failed, in one line (urllib3's connection errors carry the reason)."""
    reason = getattr(exc, "reason", None)
    text = str(reason) if isinstance(reason, BaseException) else one_line(exc)
    # urllib3 prefixes the reason with an object repr ('<...HTTPConnection object at 0x...>: ').
    return re.sub(r"^<[^>]*>:\s*", "", text.strip().splitlines()[0] if text.strip() else type(exc).__name__)


def cmd_deploy(args) -> int:
    from pipeline.runners import deploy

    check_output_dir(args.output_dir, "--output-dir")
    if args.configmap:
        check_input(args.configmap, "--configmap")
    if not args.debug:  # urllib3 logs each connection retry; the one-line answer below says it all
        import logging

        logging.getLogger("urllib3").setLevel(logging.ERROR)
    try:
        plan = deploy.plan_deploy(
            _kubeflow_config(args),
            endpoint=args.endpoint,
            output_dir=args.output_dir,
            image=args.image,
            experiment=args.experiment,
            pipeline_name=args.pipeline_name,
            namespace=args.namespace,
            allow_placeholders=args.allow_placeholders,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(deploy.describe(plan))
    if args.dry_run:
        print("dry run: nothing sent")
        return 0
    # The settings are refused (above) before anything is sent; then the API must answer.
    try:
        client = deploy.make_client(plan)  # kfp.Client calls healthz
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"error: --endpoint {args.endpoint}: cannot reach the KFP API ({_endpoint_problem(exc)})",
            file=sys.stderr,
        )
        return 1
    try:
        ids = deploy.submit(plan, client)
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"error: --endpoint {args.endpoint}: the KFP API refused the upload ({_endpoint_problem(exc)})",
            file=sys.stderr,
        )
        return 1
    print("submitted: " + ", ".join(f"{k}={v}" for k, v in ids.items()))
    return 0


def cmd_inventory(args) -> int:
    import tempfile

    from components.image_example_gen import cases, inventory, pacs_source
    from modules.io import dicomweb, limits

    check_input(args.path, "PATH")
    check_output_file(args.report, "--report")
    picture = os.path.splitext(args.report)[0] + (".inventory.png" if args.report.endswith(".png") else ".png")
    from pipeline import console

    console.configure()  # progress lines (when stderr is not a terminal) and readers' warnings
    salt = os.environ.get("MEDTFX_PATIENT_SALT", "") or args.salt
    records, info, failure = [], None, ""
    try:  # whatever happens while listing, the report is written
        with tempfile.TemporaryDirectory(prefix="medtfx-pacs-") as cache:  # a PACS dataset is read here
            if dicomweb.is_dicomweb_url(args.path):
                specs, info = pacs_source.find_cases(args.path, cache, require_labels=not args.images_only)
            else:
                specs, info = cases.find_cases(args.path, require_labels=not args.images_only)
            label_set = set(info.labels) if info.labels else None
            progress = _progress("cases")
            for i, spec in enumerate(specs):
                records.append(cases.process_case(spec, salt, label_set)[1])
                progress(i + 1, len(specs))
    except BaseException as exc:
        if limits.is_fatal(exc):
            raise
        failure = f"the dataset cannot be listed: {limits.describe_error(exc)}"
    label_names = dict(info.labels) if info is not None and info.labels else {}
    report = {
        "cases": records,
        **({"label_names": {str(k): v for k, v in sorted(label_names.items())}} if label_names else {}),
        **({"error": failure} if failure else {}),
        **({"warnings": info.warnings} if info is not None and info.warnings else {}),
    }
    with open(args.report, "w") as fh:
        json.dump(report, fh, indent=1)
    for warning in report.get("warnings", []):
        print(f"warning: {warning}")
    if failure:
        print(f"error: {failure}", file=sys.stderr)
    print(f"{cases.summarise(records)} ({info.layout if info else 'unknown'} layout); report: {args.report}")
    for r in records:
        if r["status"] != "ok":
            print(f"  quarantined {r['case_id']}: {r['reason']}")
    for line in inventory.table(records, label_names):
        print(line)
    if inventory.ingested(records):
        inventory.plot(records, picture, label_names)
        print(f"picture (spacing, size, label volumes): {picture}")
    return 0 if any(r["status"] == "ok" for r in records) else 1


def cmd_convert(args) -> int:
    from modules.io import dicom, limits
    from modules.io.nifti_reader import write_nifti
    from modules.io.volume import CaseError

    # The folder name may be a patient's name: it is called DICOM_DIR in messages (as below).
    if not os.path.isdir(args.dicom_dir):
        raise UsageError(
            "DICOM_DIR: no such folder" if not os.path.exists(args.dicom_dir) else "DICOM_DIR: not a folder"
        )
    check_output_file(args.output, "OUTPUT")
    try:  # same reader as ingestion; 4D series are written 4D like dcm2niix
        stacks, rejected = dicom.list_stacks(args.dicom_dir)
        key, paths = dicom.select_stack(stacks, args.series, args.dicom_dir, rejected)
        volume = dicom.read_series(paths, key)
        write_nifti(args.output, volume.array, volume.affine)
    except BaseException as exc:  # decoders of hostile files raise anything, native panics included
        if limits.is_fatal(exc):
            raise
        message = (
            str(exc)
            if isinstance(exc, CaseError)
            else (f"{args.dicom_dir}: the series cannot be converted: {limits.describe_error(exc)}")
        )
        # Folder and file names often carry the patient's name: scrub every identifier in the
        # folder's DICOM headers (images, SR, truncated files) before printing.
        names = dicom.identifiers_in(os.path.join(d, n) for d, _, files in os.walk(args.dicom_dir) for n in files)
        # The folder was named by the user; shown as DICOM_DIR since it may be a patient's name.
        for given in sorted({args.dicom_dir.rstrip(os.sep), os.path.abspath(args.dicom_dir)}, key=len, reverse=True):
            message = message.replace(given, "DICOM_DIR") if given else message
        print(f"error: {dicom.scrub(message, names)}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.output}: shape {volume.array.shape}, spacing "
        f"{tuple(round(float(s), 4) for s in volume.spacing)} mm, {volume.modality}, {volume.meta['stack']}"
    )
    return 0


def cmd_predict(args) -> int:
    """Segments every input; exit code 1 when any input failed (see predict_report.json)."""
    from pipeline.client import predict

    if bool(args.model) == bool(args.server):
        print("error: give exactly one of --model SAVED_MODEL_DIR or --server HOST:PORT", file=sys.stderr)
        return 2
    if args.dicomweb and (args.inputs or not args.study):
        print("error: --dicomweb takes --study UID and no INPUT", file=sys.stderr)
        return 2
    if not args.dicomweb and (not args.inputs or args.study or args.store):
        print("error: give INPUTs, or --dicomweb URL --study UID [--store]", file=sys.stderr)
        return 2
    if args.server and not args.model_name:
        print("error: --server needs --model-name (the TF Serving model name)", file=sys.stderr)
        return 2
    check_output_dir(args.output, "--output")
    try:
        model = (
            predict.InProcessModel(args.model)
            if args.model
            else predict.GrpcModel(
                args.server,
                args.model_name,
                timeout_s=args.timeout,
                attempts=args.attempts,
                max_message_bytes=args.max_message_mb * 1024 * 1024,
            )
        )
    except predict.PredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.model and os.path.normpath(model.model_dir) != os.path.normpath(args.model):
        print(f"model: {model.model_dir}")
    if args.dicomweb:
        return _predict_study(args, model)
    records = predict.predict_inputs(
        model,
        args.inputs,
        args.output,
        modality=args.modality,
        max_voxels=args.max_voxels,
        num_classes=args.num_classes,
        series=args.series,
        channels=args.channels,
    )
    failed = sum(r["status"] != "ok" for r in records)
    print(
        f"{len(records) - failed} of {len(records)} inputs segmented; report: "
        f"{os.path.join(args.output, predict.REPORT_FILE)}"
    )
    return 1 if failed else 0


def _predict_study(args, model) -> int:
    """predict --dicomweb: exit 1 when a series failed or none was segmented, 2 for a bad URL."""
    from modules.io import dicomweb
    from pipeline.client import predict

    try:
        client = dicomweb.DicomWebClient(args.dicomweb)
        records = predict.predict_study(
            model,
            client,
            args.study,
            args.output,
            store=args.store,
            max_voxels=args.max_voxels,
            num_classes=args.num_classes,
        )
    except (ValueError, dicomweb.DicomWebError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = {status: sum(r["status"] == status for r in records) for status in ("ok", "skipped", "failed")}
    print(
        f"{counts['ok']} of {len(records)} series segmented ({counts['skipped']} skipped, "
        f"{counts['failed']} failed){'; SEGs stored in the study' if args.store and counts['ok'] else ''}; "
        f"report: {os.path.join(args.output, predict.REPORT_FILE)}"
    )
    return 1 if counts["failed"] or not counts["ok"] else 0


def cmd_bench_dicom(args) -> int:
    check_output_file(args.json, "--json")
    from pipeline.tools import bench_dicom

    return bench_dicom.main(args)


def cmd_bench_resample(args) -> int:
    check_output_file(args.json, "--json")
    _quiet_tensorflow()
    from pipeline.tools import bench_resample

    return bench_resample.main(args)


def cmd_bench_io(args) -> int:
    check_output_file(args.json, "--json")
    _quiet_tensorflow()
    from pipeline.tools import bench_io

    return bench_io.main(args)


def cmd_bench_train(args) -> int:
    check_output_file(args.json, "--json")
    _quiet_tensorflow()
    from pipeline.tools import bench_train

    return bench_train.main(args)


def cmd_bench_infer(args) -> int:
    check_output_file(args.json, "--json")
    _quiet_tensorflow()
    from pipeline.tools import bench_infer

    return bench_infer.main(args)


# Phantoms are small and easy: a few minutes of training reach Dice > 0.9.
DEMO_BUDGET_MINUTES = 2.0


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (the usage itself is one `--help` away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from pipeline.config import BEAM_PROFILES

    parser = _Parser(prog="medtfx", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks and TensorFlow's start-up log instead of one-line errors",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p):
        p.add_argument(
            "--config",
            default="",
            metavar="FILE.yaml",
            help="settings file: stage sections (training: {filters: [16, 32]}) or flat keys",
        )
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="one setting, e.g. augment=false or training.augment=false (repeatable; `medtfx settings` lists them)",
        )
        return p

    def with_budget(p, default=None):
        p.add_argument(
            "--budget-minutes",
            type=float,
            default=default,
            metavar="N",
            help="Trainer wall time the plan fits into (default: planning.budget_minutes, 30)",
        )
        return p

    p = sub.add_parser("synth", help="write synthetic phantoms (Decathlon NIfTI + DICOM series)")
    p.add_argument("out_dir")
    p.add_argument(
        "--kind",
        default="mixed",
        choices=("mixed", "ct"),
        help="mixed: 64 mm CT/MR phantoms as DICOM and NIfTI; ct: 150 mm field of view, "
        "0.8 x 0.8 x 4 mm voxels, an organ with a small lesion (NIfTI)",
    )
    p.add_argument("--cases", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--structures", type=int, default=2, choices=(2, 3))
    p.set_defaults(func=cmd_synth)

    p = with_budget(with_config(sub.add_parser("run", help="run the pipeline locally on a dataset")))
    p.add_argument(
        "--data",
        required=True,
        help="Decathlon folder, DICOM tree, manifest CSV or "
        "dicomweb+http(s)://HOST/PATH[?QIDO keys, e.g. StudyDate=20240101-20241231]",
    )
    p.add_argument("--workdir", required=True)
    p.set_defaults(func=cmd_run)

    p = with_budget(
        with_config(
            sub.add_parser("plan", help="ingest, fingerprint and plan a dataset without training (prints the choices)")
        )
    )
    p.add_argument(
        "--data",
        required=True,
        help="Decathlon folder, DICOM tree, manifest CSV or "
        "dicomweb+http(s)://HOST/PATH[?QIDO keys, e.g. StudyDate=20240101-20241231]",
    )
    p.add_argument("--output", required=True, metavar="PLAN.json")
    p.add_argument("--workdir", default="workdir/plan", help="ingestion and metadata go here")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("settings", help="every setting with its default and description")
    p.set_defaults(func=cmd_settings)

    p = with_budget(
        with_config(sub.add_parser("demo", help="generate phantoms and run the pipeline on them")),
        default=DEMO_BUDGET_MINUTES,
    )
    p.add_argument("--workdir", default="workdir/demo")
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = with_config(sub.add_parser("compile", help="compile the pipeline for an orchestrator"))
    p.add_argument("--runner", default="kubeflow", choices=("kubeflow",))
    p.add_argument("--output", required=True)
    p.add_argument("--data", default="", help="dataset path as seen from the cluster")
    p.set_defaults(func=cmd_compile)

    def with_kubeflow(p):
        p.add_argument(
            "--beam-profile",
            choices=sorted(BEAM_PROFILES),
            default=None,
            help="Beam runner profile (same as --set beam_profile=...)",
        )
        p.add_argument(
            "--configmap",
            default="",
            metavar="PATH",
            help="ConfigMap medtfx-pipeline-config (Trainer GPU settings, PVCs, push "
            "target) from a kustomization dir (k8s/overlays/gpu-cloud) or a YAML file "
            "(`kubectl kustomize ...` / `kubectl get configmap -o yaml` output)",
        )
        p.add_argument(
            "--allow-placeholders",
            action="store_true",
            help="compile even with the placeholder image (medtfx:0.1.0) or bucket (gs://medtfx-pipeline-root)",
        )
        return p

    with_kubeflow(p)
    p = with_kubeflow(
        with_config(
            sub.add_parser("deploy", help="compile, upload a new pipeline version to Kubeflow Pipelines, start a run")
        )
    )
    p.add_argument("--endpoint", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    p.add_argument("--dry-run", action="store_true", help="print what would be sent; send nothing")
    p.add_argument("--image", default=None, help="component image (default: ${MEDTFX_IMAGE}, else the config's image)")
    p.add_argument("--experiment", default="medtfx")
    p.add_argument("--pipeline-name", default=None, help="default: the config's pipeline_name")
    p.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user)")
    p.add_argument("--data", default="", help="dataset path as seen from the pipeline pods")
    p.add_argument("--output-dir", default="workdir/kubeflow", help="where the compiled files go")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("inventory", help="report every case of a dataset as ok or quarantined")
    p.add_argument("path", help="Decathlon folder, DICOM tree, manifest CSV or dicomweb+http(s)://HOST/PATH")
    p.add_argument("--report", required=True)
    p.add_argument("--images-only", action="store_true", help="do not require labels")
    p.add_argument("--salt", default="medtfx-default-salt", help="patient hash salt (MEDTFX_PATIENT_SALT overrides)")
    p.set_defaults(func=cmd_inventory)

    p = sub.add_parser("convert", help="convert one DICOM series to NIfTI as ingestion sees it")
    p.add_argument("dicom_dir")
    p.add_argument("output")
    p.add_argument(
        "--series",
        type=int,
        default=None,
        metavar="N",
        help="which image stack (1-based, as listed) when the folder holds several",
    )
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "predict",
        help="segment NIfTI files / DICOM series folders with an exported "
        "model (in process) or a TF Serving gRPC endpoint",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="NIfTI file or folder holding one DICOM series")
    p.add_argument("--output", required=True, help="writes <name>.nii.gz (+ <name>.seg.dcm for DICOM)")
    p.add_argument("--model", default="", metavar="SAVED_MODEL_DIR", help="exported model, run in process")
    p.add_argument("--server", default="", metavar="HOST:PORT", help="TF Serving gRPC endpoint")
    p.add_argument("--model-name", default="", help="TF Serving model name (with --server)")
    p.add_argument(
        "--modality",
        default="",
        help="modality of NIfTI inputs (CT, MR, ...); default: the one the model was trained on; DICOM "
        "inputs use their header",
    )
    p.add_argument("--max-voxels", type=int, default=512**3, help="refuse larger volumes")
    p.add_argument("--max-message-mb", type=int, default=1024, help="gRPC send/receive limit")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per gRPC call")
    p.add_argument("--attempts", type=int, default=4, help="gRPC tries per input (transient errors)")
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes incl. background for DICOM SEG segments (default: from the model)",
    )
    p.add_argument(
        "--series",
        type=int,
        default=None,
        metavar="N",
        help="which image stack (1-based, as listed) of DICOM folders holding several",
    )
    p.add_argument(
        "--channels",
        type=int,
        default=None,
        metavar="C",
        help="image channels of a --server model (an in-process --model says its own): inputs "
        "CASE_0000.nii.gz, CASE_0001.nii.gz, ... are one case",
    )
    p.add_argument(
        "--dicomweb",
        default="",
        metavar="URL",
        help="DICOMweb root of a PACS (instead of INPUTs); credentials from MEDTFX_DICOMWEB_TOKEN "
        "or MEDTFX_DICOMWEB_USER/MEDTFX_DICOMWEB_PASSWORD",
    )
    p.add_argument("--study", default="", metavar="UID", help="StudyInstanceUID to segment (with --dicomweb)")
    p.add_argument(
        "--store",
        action="store_true",
        help="store each SEG into the study (STOW-RS); without it nothing is written to the PACS",
    )
    p.set_defaults(func=cmd_predict)

    # `medtfx bench <what>`: one sub-subcommand per benchmark, each writing JSON.
    bench = sub.add_parser("bench", help="benchmarks (timings written as JSON)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    p = bench_sub.add_parser("dicom", help="our DICOM reader vs dcm2niix on real series")
    p.add_argument("--json", required=True, metavar="FILE", help="where to write the timings")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per series (median is kept)")
    p.add_argument(
        "--data",
        default="",
        help="folder holding dcm_qa_nih / dcm_qa_enh (default: ../shared/data/dicom beside the repository)",
    )
    p.add_argument(
        "--ct",
        choices=("all", "uncompressed", "jpeg2000", "none"),
        default="all",
        help="clinical-size CT series (400 x 512^2) generated into a temporary folder and timed too "
        "(default: all; JPEG 2000 is timed against a dcm2niix built with OpenJPEG, e.g. apt-get install dcm2niix)",
    )
    p.set_defaults(func=cmd_bench_dicom)
    p = bench_sub.add_parser("resample", help="our TF trilinear resampling vs SimpleITK")
    p.add_argument("--json", required=True, metavar="FILE", help="where to write the timings")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per volume (median is kept)")
    p.add_argument(
        "--data",
        default="",
        help="Decathlon folder (default: ../shared/data/hippocampus beside the repository; phantoms only when absent)",
    )
    p.set_defaults(func=cmd_bench_resample)
    p = bench_sub.add_parser(
        "io",
        help="volume input pipelines: the seed's in-memory / float_list "
        "TFRecord / generator vs medtfx's int16 records (cached and streaming)",
    )
    p.add_argument("--json", required=True, metavar="FILE", help="where to write the timings")
    p.add_argument("--iterations", type=int, default=100, help="batches timed per method")
    p.add_argument("--batch", type=int, default=5)
    p.add_argument("--volumes", type=int, default=10, help="synthetic CT volumes written")
    p.add_argument("--shape", type=int, nargs=3, default=[128, 224, 224], metavar=("X", "Y", "Z"))
    p.add_argument("--no-generator", action="store_true", help="skip the (slow) Python generator")
    p.add_argument("--repeats", type=int, default=1, help="interleaved runs per method (best is kept)")
    p.add_argument("--workdir", default="", help="where the records go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the written records")
    p.set_defaults(func=cmd_bench_io)
    p = bench_sub.add_parser(
        "train",
        help="the Trainer's training step vs MONAI's DynUNet (same plan, float32 and bfloat16; needs .venv-monai)",
    )
    p.add_argument("--json", required=True, metavar="FILE", help="where to write the timings")
    p.add_argument("--plans", nargs="+", default=["hippocampus", "ct"], choices=["hippocampus", "ct"])
    p.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds per variant (best is kept)")
    p.add_argument("--steps", type=int, default=0, help="timed steps per round (default: 5 hippocampus, 2 CT)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant before the first round")
    p.add_argument("--no-monai", action="store_true", help="time the medtfx side only")
    p.set_defaults(func=cmd_bench_train)
    p = bench_sub.add_parser(
        "infer",
        help="sliding-window inference on a CT-sized volume vs MONAI's sliding_window_inference (needs .venv-monai)",
    )
    p.add_argument("--json", required=True, metavar="FILE", help="where to write the timings")
    p.add_argument("--rounds", type=int, default=1, help="timed runs with mirroring off (best is kept)")
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="volume on the network grid (default: the plan's grid for a 512x512x200 CT at 0.8x0.8x2.5 mm)",
    )
    p.add_argument("--mirror-axes", type=int, nargs="+", default=[0], help="axes mirrored in the 'on' run")
    p.add_argument(
        "--windows-per-batch",
        type=int,
        default=4,
        help="windows per network call, both sides (torch convolves a batch of one small window with "
        "its slow direct kernel, not oneDNN)",
    )
    p.add_argument("--no-monai", action="store_true", help="time the medtfx side only")
    p.set_defaults(func=cmd_bench_infer)
    # `--debug` also after the subcommand; SUPPRESS keeps a subcommand from resetting it to False.
    for command in [*sub.choices.values(), *bench_sub.choices.values()]:
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:
        # Before anything imports TensorFlow: its C++ start-up lines (CUDA factory registration,
        # the oneDNN notice) are not actionable on the command line.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # native decoders' panics are BaseExceptions too
        if args.debug:
            raise
        print(f"error: {one_line(exc)} (medtfx --debug ... shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
