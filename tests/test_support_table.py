"""The README's support table is the one the test matrix generates (scripts/support_table.py)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_support_table_is_current():
    sys.path.insert(0, str(ROOT / "scripts"))
    import support_table

    table = support_table.generate()
    from matrix import MORE_FAMILY_CONFIGS

    # two tables: separator row + one row per family each
    # (the second table's header row follows a newline too)
    assert table.count("\n| ") == (18 + 1) + (len(MORE_FAMILY_CONFIGS) + 2) and len(MORE_FAMILY_CONFIGS) >= 24
    assert "✗" in table and "use --widen-hidden" in table  # unsupported cells carry their reason
    assert support_table.readme_block((ROOT / "README.md").read_text()) == table, (
        "README.md's support table is out of date: run python scripts/support_table.py --write")


def test_check_mode_exit_code():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "support_table.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
