"""``python -m pytest_modelbudget compare BASE.json HEAD.json``: what a pull request did to the budgets.

BASE and HEAD are the ``--budget-json`` reports of the base and the head of a pull request
(each merged first when the suite runs in shards). Prints the comparison, and writes it as
Markdown that fits a GitHub comment and as JSON where asked.

Exit status: 0 when HEAD is within budget, 1 when HEAD has a failed budget, 2 for bad or
mismatched files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "compare the --budget-json reports of two runs (a pull request's base and head)"
DESCRIPTION = """\
Compare two runs call by call: a headline (grew, shrank, over budget, new, removed,
unchanged), one row per call that changed -- metric, base, head, change, head's verdict --
and, for count changes, the modules that grew or shrank. Timed figures are compared only
between runs on the same kind of device. Exit status: 0 when HEAD is within budget, 1 when
HEAD has a failed budget, 2 for bad or mismatched files.
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("compare", help=HELP, description=DESCRIPTION)
    parser.add_argument("base", metavar="BASE.json", help="the base run's --budget-json report")
    parser.add_argument("head", metavar="HEAD.json", help="the head run's --budget-json report")
    parser.add_argument(
        "--markdown", metavar="PATH", help="write the comparison as a pull-request comment here"
    )
    parser.add_argument("--json", metavar="PATH", help="write the whole comparison as JSON here")
    parser.add_argument(
        "--all", action="store_true", help="every call and every metric, not only what changed"
    )


def main(args: argparse.Namespace) -> int:
    from ..budgets.compare import ComparisonError, compare
    from ..budgets.shards import ShardError, load_shard
    from ..report import compare as words

    try:
        base, head = load_shard(Path(args.base)), load_shard(Path(args.head))
        comparison = compare(base.results, head.results)
    except (ShardError, ComparisonError) as error:
        print(f"python -m pytest_modelbudget compare: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(words.terminal_lines(comparison, every_call=args.all)))
    try:
        if args.markdown:
            Path(args.markdown).write_text(words.markdown(comparison, every_call=args.all), encoding="utf-8")
        if args.json:
            Path(args.json).write_text(
                json.dumps(words.to_json(comparison), indent=2) + "\n", encoding="utf-8"
            )
    except OSError as error:
        print(
            f"python -m pytest_modelbudget compare: error: cannot write {error.filename}: {error.strerror}",
            file=sys.stderr,
        )
        return 2
    return 1 if comparison.head_failed else 0
