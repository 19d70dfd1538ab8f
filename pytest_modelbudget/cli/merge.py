"""``python -m pytest_modelbudget merge shard-*.json``: the reports of CI shards as one run.

Prints the summary table of the whole suite, writes the merged JSON, Markdown and HTML
reports where asked, and with ``--update-budgets`` writes the merged baselines to
``budgets.yaml`` through the same locked, atomic update a serial run uses -- byte for byte
what one ``pytest --model-budget --update-budgets`` over the whole suite would write.

Exit status: 0 when no shard had a failed budget, 1 when one had, 2 for bad input (nothing
is written then).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import BaselineFileError

HELP = "merge the --budget-json reports of CI shards into one summary, report and budgets.yaml"
DESCRIPTION = """\
Merge the --budget-json reports of jobs that each ran part of a suite (pytest-split,
pytest-shard, a folder per job) into one run: print its summary table and write the merged
reports. With --update-budgets, write the merged baselines to the budgets file exactly as one
serial `pytest --model-budget --update-budgets` over the whole suite would; stale entries are
removed only when the shards together ran every budgeted test they collected.
Exit status: 0 within budget, 1 when a shard had a failed budget, 2 for bad input.
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("merge", help=HELP, description=DESCRIPTION)
    parser.add_argument("shards", nargs="+", metavar="SHARD.json", help="the shards' --budget-json reports")
    parser.add_argument(
        "--update-budgets", action="store_true", help="write the merged baselines to the budgets file"
    )
    parser.add_argument(
        "--budgets-file", default="budgets.yaml", metavar="PATH", help="the baseline file (budgets.yaml)"
    )
    parser.add_argument("--json", metavar="PATH", help="write the merged JSON report here")
    parser.add_argument("--markdown", metavar="PATH", help="write a Markdown summary here")
    parser.add_argument("--html", metavar="PATH", help="write a self-contained HTML report here")


def main(args: argparse.Namespace) -> int:
    from .._version import __version__
    from ..budgets import baselines
    from ..budgets.shards import ShardError, load_shard, merge
    from ..report import exports, summary

    budgets_file = Path(args.budgets_file)
    try:
        merged = merge([load_shard(Path(name)) for name in args.shards], plugin=__version__)
        current = baselines.load(budgets_file)
    except (ShardError, BaselineFileError) as error:
        return _bad_input(str(error))
    stale = merged.stale(current.entries)
    update = None
    if args.update_budgets:
        try:
            changed = baselines.update(budgets_file, merged.entries, frozenset(stale))
        except BaselineFileError as error:
            return _bad_input(str(error))
        update = summary.UpdateSummary(
            written=len(merged.entries),
            new=sum(1 for key in merged.entries if key not in current.entries),
            removed=tuple(stale),
            file_changed=changed,
        )
    results = list(merged.results)
    lines = list(
        summary.summary_lines(
            results, budgets_file=str(budgets_file), updating=args.update_budgets, stale=stale, update=update
        )
    )
    if args.update_budgets and not merged.whole_suite:
        why = (
            "an xdist worker of a shard crashed"
            if not merged.run.complete
            else "a shard is missing or narrowed"
        )
        lines.append(f"no stale entry was removed: the shards did not run the whole suite together ({why})")
    print("\n".join(lines))
    try:
        if args.json:
            document = exports.json_report(
                results, budgets_file=str(budgets_file), env=merged.environment, run=merged.run
            )
            Path(args.json).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        if args.markdown:
            Path(args.markdown).write_text(
                "\n".join(exports.markdown_lines(results)) + "\n", encoding="utf-8"
            )
        if args.html:
            from ..report.html import render

            page = render(results, title="Model budgets", environment=merged.environment)
            Path(args.html).write_text(page, encoding="utf-8")
    except OSError as error:
        return _bad_input(f"cannot write {error.filename}: {error.strerror}")
    return 1 if merged.failed else 0


def _bad_input(message: str) -> int:
    print(f"python -m pytest_modelbudget merge: error: {message}", file=sys.stderr)
    return 2
