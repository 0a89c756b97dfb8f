"""Turn an experiment (finished, interrupted or still running) into figures and tables.

    kdtune report results/<name>
    kdtune report results/<name> --out paper/figures --format pdf

Writes summary.md (also printed), summary.csv and the figures into results/<name>/report/
(or --out), and refreshes the experiment's per-trial summary.csv and temperature_results.json.
Needs no Ray cluster: it reads Tune's experiment folders, local or on remote storage.
"""

from __future__ import annotations

from kdtune.cli.args import ArgumentParser, run_cli
from kdtune.report.summary import FORMATS


def parse_args(argv):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", help="the experiment folder, results/<name> (the one holding experiment.json)")
    p.add_argument("--out", help="where to write the report (default: <experiment>/report)")
    p.add_argument("--format", choices=FORMATS, default="png", help="figure file format (default: png)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from kdtune.report.summary import write_report

    report = write_report(args.experiment, args.out, args.format)
    print(report["markdown"])
    print(f"report written to {report['out']}")
    return 0


if __name__ == "__main__":
    run_cli(main)
