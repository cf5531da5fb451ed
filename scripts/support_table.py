"""Print, write or check the README's support table (family x operation), generated from the test matrix.

    python scripts/support_table.py            # print the table
    python scripts/support_table.py --write    # replace the table in README.md
    python scripts/support_table.py --check    # exit 1 if README.md's table is out of date

A cell is supported when planning that operation on the test matrix's tiny model of that family
succeeds (the same planning ``hf-expand grow --dry-run`` does); the preservation tests then check every
supported cell end to end and every unsupported cell for the very error quoted here.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

START, END = "<!-- support-table:start -->", "<!-- support-table:end -->"


def generate() -> str:
    from matrix import FAMILY_CONFIGS, OPERATION_CASES, unsupported_reason

    ops = list(OPERATION_CASES)
    reasons: list[str] = []
    rows = [f"| {family} | " + " | ".join(_cell(unsupported_reason(family, OPERATION_CASES[op]), reasons) for op in ops)
            + " |" for family in FAMILY_CONFIGS]
    lines = ["| family | " + " | ".join(f"`{op}`" for op in ops) + " |", "| --- |" + " :-: |" * len(ops), *rows, ""]
    lines += [f"- ({i}) {why}" for i, why in enumerate(reasons, 1)]
    return "\n".join(lines + ["", *more_families(reasons)])


def _cell(reason: str | None, reasons: list[str]) -> str:
    """✓, or ✗ with the number of its reason in ``reasons`` (added there the first time it is met)."""
    if reason is None:
        return "✓"
    why = re.sub(r"^\S+ is not supported for [^:]+: ", "", reason)
    if why not in reasons:
        reasons.append(why)
    return f"✗ ({reasons.index(why) + 1})"


def more_families(reasons: list[str]) -> list[str]:
    """The families beyond the full matrix: every operation, each grown by tests/test_more_families.py, and
    whether the layout comes from a data file or is inferred from transformers."""
    from matrix import MORE_FAMILY_CONFIGS, MORE_OPERATIONS, more_unsupported_reason

    from hf_expand.architectures import layout_is_inferred

    first = len(reasons)
    rows = []
    for family in MORE_FAMILY_CONFIGS:
        cells = [_cell(more_unsupported_reason(family, op), reasons) for op in MORE_OPERATIONS]
        layout = "inferred" if layout_is_inferred(family) else "data file"
        rows.append(f"| {family} | {layout} | " + " | ".join(cells) + " |")
    lines = [f"Families beyond the full matrix ({len(rows)}; each cell grown by `tests/test_more_families.py`, "
             f"reloaded in stock transformers and compared with the base on other probes, every new slice learning):",
             "",
             "| family | layout | " + " | ".join(f"`{op}`" for op in MORE_OPERATIONS) + " |",
             "| --- | --- |" + " :-: |" * len(MORE_OPERATIONS), *rows, ""]
    lines += [f"- ({i}) {why}" for i, why in enumerate(reasons, 1) if i > first]
    return lines


def readme_block(text: str) -> str | None:
    if START not in text or END not in text:
        return None
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md's table differs")
    args = parser.parse_args(argv)
    table = generate()
    readme = ROOT / "README.md"
    text = readme.read_text()
    if args.check:
        ok = readme_block(text) == table
        print("README support table is up to date" if ok else "README support table is out of date: run scripts/support_table.py --write")
        return 0 if ok else 1
    if args.write:
        if readme_block(text) is None:
            print(f"README.md has no {START} ... {END} markers", file=sys.stderr)
            return 2
        head, rest = text.split(START, 1)
        readme.write_text(f"{head}{START}\n{table}\n{END}{rest.split(END, 1)[1]}")
        print("wrote the support table into README.md")
        return 0
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
