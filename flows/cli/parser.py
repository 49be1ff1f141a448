"""The argument parser: every command, its flags and its help."""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.cli.admin import cmd_db_migrate, cmd_db_refresh, cmd_db_snapshot, cmd_server
from flows.cli.data import cmd_import_upstream, cmd_phantoms, cmd_preprocess
from flows.cli.judging import cmd_judge, cmd_judge_train
from flows.cli.models import cmd_env, cmd_infer, cmd_models
from flows.cli.results import cmd_benchmark, cmd_export, cmd_report, cmd_score

GLOBAL_FLAGS = ("--debug", "--verbose")


def _db_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--db", metavar="FILE",
                        help="warehouse file (default: $CTSVQA_DB, else warehouse/ctsvqa.duckdb)")
    return parent


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ctsvqa")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    db = _db_parent()
    parser = argparse.ArgumentParser(prog="ctsvqa", description="Benchmark 3D medical VLMs on CT-SpatialVQA.")
    parser.add_argument("--debug", action="store_true",
                        help="show Prefect's full console log and the traceback of an error ($CTSVQA_DEBUG=1)")
    parser.add_argument("--verbose", action="store_true", help="show Prefect's progress (INFO) log lines")
    parser.add_argument("--version", action="version", version=f"ctsvqa {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("import-upstream", parents=[db],
                       help="load an upstream CT-SpatialVQA clone (dataset, predictions, judge verdicts)")
    p.add_argument("path", type=Path, help="root of the clone (or of any dataset in its layout)")
    p.add_argument("--dataset", help="dataset id (default: the layout's manifest name, else ct-spatialvqa)")
    p.set_defaults(func=cmd_import_upstream)

    p = sub.add_parser("benchmark", parents=[db],
                       help="the main job: data set -> preprocess -> infer -> judge -> score -> report")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="benchmark YAML (see examples/benchmark.yaml; default: a phantom set, the offline "
                        "baselines, the phantom expert and its shuffle ablation, the learned offline judge)")
    p.add_argument("--out", type=Path, default=Path("out"), help="report, snapshot and generated data (default: out/)")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("judge", parents=[db], help="judge predictions with a panel of judges")
    p.add_argument("--judges", required=True, metavar="FILE|PRESET",
                   help="a judges YAML file, or a preset: paper, offline, offline-learned")
    p.add_argument("--run", action="append", metavar="NAME", help="only this run (repeatable; default: all runs)")
    p.add_argument("--dry-run", action="store_true", help="forecast calls, tokens and cost; send nothing")
    p.add_argument("--retry-failed", action="store_true",
                   help="also judge again what ended unparsed, blocked or without a verdict")
    p.add_argument("--wait", action="store_true",
                   help="if another session is judging these runs with these judges, wait for it (default: exit 2)")
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("judge-train", parents=[db],
                       help="train the offline `learned` judge's head from the imported upstream verdicts")
    p.add_argument("--target", default="majority", choices=("majority", "gpt", "gemini2.5", "qwen"),
                   help="which published verdicts to learn (default: the published jury's majority)")
    p.add_argument("--out", type=Path, help="where head.npz and manifest.json go (default: the shipped "
                   "adapters/judges/learned/, which makes a new learned-v1 judge)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embed-cache", type=Path, metavar="FILE",
                   help="keep the text embeddings in this .npz so a re-training embeds nothing twice")
    p.add_argument("--no-leave-one-out", dest="leave_one_out", action="store_false",
                   help="train only the head on every run, not also one per run without that run's verdicts "
                        "(OUT/leave-one-out/<run>/, what a judge with options.leave_one_out scores that run with)")
    p.set_defaults(func=cmd_judge_train)

    p = sub.add_parser("phantoms", help="generate a synthetic chest-CT data set in the upstream layout")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n", type=int, default=6, help="number of volumes")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--size", choices=("small", "full"), default="small",
                   help="small: fast demo volumes; full: CT-RATE sized (512x512x200-300)")
    p.add_argument("--version", type=int, choices=(1, 2), default=2,
                   help="generator version: 2 (default) mirrors half the bodies so no answer is fixed by anatomy; "
                        "1 reproduces the earlier sets")
    p.set_defaults(func=cmd_phantoms)

    p = sub.add_parser("preprocess", parents=[db], help="build model inputs for the volumes of a dataset")
    p.add_argument("--recipes", default="all", help="all | own | upstream | comma-separated recipe names")
    p.add_argument("--dataset", help="only this dataset (default: all)")
    p.add_argument("--volumes", action="append", metavar="DIR",
                   help="where the .nii.gz files are (repeatable; the dataset's import folder is searched too)")
    p.add_argument("--out", help="output root (default: inputs/ beside the warehouse file)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (one thread each)")
    p.add_argument("--decode-cache", metavar="DIR", help="also keep decoded int16 volumes here, by content hash")
    p.add_argument("--max-cache", metavar="SIZE",
                   help="keep at most this much of built inputs on disk (e.g. 50G), least recently used go first; "
                        "rebuilt on demand (default: $CTSVQA_MAX_CACHE, else unbounded)")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("infer", parents=[db], help="run a model (or a baseline) over a dataset; resumable")
    p.add_argument("--model", required=True, metavar="NAME", help="an adapter name (see `ctsvqa models`) or module:Class")
    p.add_argument("--checkpoint", metavar="PATH", help="checkpoint directory or hub id (default: the adapter's)")
    p.add_argument("--code-dir", metavar="DIR", help="a checkout of the model's own repository (see `ctsvqa models`)")
    p.add_argument("--name", help="run name (default: the model name, plus -shuffled under the ablation)")
    p.add_argument("--dataset", help="dataset id (required when the warehouse has several)")
    p.add_argument("--device", help="cpu | cuda | cuda:N (default: cpu; cuda with --devices/--gpus)")
    p.add_argument("--devices", metavar="cuda:0,cuda:1",
                   help="one model replica per GPU of this host, volumes shared out as replicas free up (Ray)")
    p.add_argument("--gpus", type=int, metavar="N", help="N one-GPU model replicas on a local Ray or --ray-address")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="join this Ray cluster (default: $RAY_ADDRESS, else a local Ray just for the run)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: the adapter's")
    p.add_argument("--batch-size", type=int, default=8, help="questions of one volume per adapter call")
    p.add_argument("--limit-volumes", type=int, metavar="N", help="only the first N volumes of the dataset")
    p.add_argument("--seed", type=int, default=0, help="recorded; drives sampling, the random baseline and the ablation")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="adapter option (repeatable)")
    p.add_argument("--ablate", choices=("shuffle-volumes",),
                   help="shuffle-volumes: show every question another patient's volume (a seeded derangement)")
    p.add_argument("--retry-failed", action="store_true", help="also answer again the questions stored as errors")
    p.add_argument("--wait", action="store_true",
                   help="if another session is answering this run, wait for it to finish (default: refuse, exit 2)")
    p.add_argument("--env", metavar="FAMILY|current|PYTHON",
                   help="where a remote-code model runs: its family environment (default, a worker process; "
                        "`ctsvqa env create FAMILY`), `current` (in this process), or PATH/TO/python (your own env)")
    p.add_argument("--models-config", metavar="FILE",
                   help="YAML: per model checkpoint, code_dir, env, options, dtype (default: $CTSVQA_MODELS_CONFIG)")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("models", help="list the model adapters, their recipes and whether what they need is found")
    p.add_argument("--model", metavar="NAME", help="only this adapter")
    p.add_argument("--checkpoint", metavar="PATH", help="check this checkpoint instead of the adapters' defaults")
    p.add_argument("--code-dir", metavar="DIR", help="check this checkout of the model's own code")
    p.add_argument("--models-config", metavar="FILE",
                   help="YAML: per model checkpoint, code_dir, env, options (default: $CTSVQA_MODELS_CONFIG)")
    p.add_argument("--json", action="store_true", help="print the adapters as JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("env", help="the family environments that remote-code models run in (create|list)")
    envsub = p.add_subparsers(dest="env_command", required=True)
    s = envsub.add_parser("create", help="build (or repair) a family's environment from adapters/models/envs/")
    s.add_argument("family", help="m3d, med3dvlm, ctchat, radfm, vila-m3, merlin")
    s.add_argument("--python", metavar="PATH", help="base interpreter (default: one that fits the family's # python:)")
    s.add_argument("--torch", metavar="REQS", help="replace the torch line, e.g. 'torch==2.13.0' or "
                   "'torch==2.14.1 torchvision==0.29.1' (a package named here is dropped from the rest)")
    s.set_defaults(func=cmd_env)
    s = envsub.add_parser("list", help="each family: path, ready or not, Python and key package versions")
    s.add_argument("--json", action="store_true", help="print the environments as JSON")
    s.set_defaults(func=cmd_env)

    p = sub.add_parser("score", parents=[db], help="text metrics (BLEU, ROUGE, METEOR, SBERT, exact match) per run")
    p.add_argument("--run", action="append", metavar="NAME", help="only this run (repeatable; default: all runs)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("report", parents=[db], help="print the accuracy tables")
    p.add_argument("--dataset", help="only this dataset")
    p.add_argument("--html", type=Path, metavar="DIR",
                   help="also write a self-contained HTML report (charts inlined) and PNG/SVG charts here")
    p.add_argument("--panel", help="jury panel of the HTML report (default: paper, upstream, offline-learned, "
                                   "offline — the first that judged the dataset)")
    p.add_argument("--json", action="store_true", help="print the tables as JSON (one object per dataset)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", parents=[db], help="write upstream-format CSV/JSON and Parquet of every view")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--dataset", help="dataset to export (required when the warehouse has several)")
    p.add_argument("--panel", help="jury panel to export (required when the dataset has verdicts of several)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("server", parents=[db],
                       help="the local Prefect server the commands share (start|stop|status|env)")
    p.add_argument("action", choices=("start", "stop", "status", "env"),
                   help="env prints `export PREFECT_API_URL=...` for the prefect CLI: eval \"$(ctsvqa server env)\"")
    p.add_argument("--json", action="store_true", help="status: print the server's state as JSON")
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("db", help="warehouse maintenance")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    s = dbsub.add_parser("snapshot", parents=[db], help="write a read-only copy for analysts")
    s.add_argument("out", type=Path, help="snapshot file, e.g. snapshots/ctsvqa.duckdb")
    s.add_argument("--parquet", type=Path, metavar="DIR", help="also write every view as Parquet here")
    s.add_argument("--storage-version", metavar="V",
                   help="DuckDB storage version of the copy (default v1.5.0: DuckDB 1.5 and newer, the newest "
                        "duckdb-cli on PyPI included, open it; `current`: this DuckDB's own)")
    s.add_argument("--dataset", help="Parquet: only this dataset's rows")
    s.add_argument("--panel", help="Parquet: only this jury panel's rows (views with a panel column)")
    s.set_defaults(func=cmd_db_snapshot)
    s = dbsub.add_parser("refresh", parents=[db], help="bring the summary tables behind the metric views up to date")
    s.add_argument("--full", action="store_true", help="recompute every run, not only the changed ones")
    s.set_defaults(func=cmd_db_refresh)
    s = dbsub.add_parser("migrate", parents=[db], help="create or upgrade the schema and views")
    s.set_defaults(func=cmd_db_migrate)
    return parser
