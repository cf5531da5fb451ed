"""The README's support table is the one the test matrix generates (scripts/support_table.py)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_support_table_is_current():
    """``support_table.py --check`` (the script end to end: exit 0 only when README.md's table is the generated
    one), then the table itself: every family of the matrix a row, at least 63 families, reasons quoted."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "support_table.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    sys.path.insert(0, str(ROOT / "scripts"))
    import support_table
    from matrix import FAMILY_CONFIGS, MORE_FAMILY_CONFIGS

    table = support_table.readme_block((ROOT / "README.md").read_text())
    rows = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")}
    families = set(FAMILY_CONFIGS) | set(MORE_FAMILY_CONFIGS)
    assert families <= rows and len(families) >= 63
    assert "✗" in table and "use --widen-hidden" in table  # unsupported cells carry their reason
    assert "not tested" not in table
