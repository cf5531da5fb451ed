"""The README's support table is the one the test matrix generates (scripts/support_table.py)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# In the same worker as test_more_families' refused-cells test: both plan every cell (cached in tests/matrix.py).
@pytest.mark.xdist_group("matrix-planning")
def test_readme_support_table_is_current(capsys):
    """``support_table.py --check`` (the script's entry point: 0 only when README.md's table is the generated
    one), then the table itself: every family of the matrix a row, at least 63 families, reasons quoted."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import support_table
    from matrix import FAMILY_CONFIGS, MORE_FAMILY_CONFIGS

    code = support_table.main(["--check"])
    assert code == 0, capsys.readouterr().out

    table = support_table.readme_block((ROOT / "README.md").read_text())
    rows = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")}
    families = set(FAMILY_CONFIGS) | set(MORE_FAMILY_CONFIGS)
    assert families <= rows and len(families) >= 63
    assert "✗" in table and "use --widen-hidden" in table  # unsupported cells carry their reason
    assert "not tested" not in table


def test_check_fails_on_a_stale_table(tmp_path, monkeypatch, capsys):
    """``--check`` exits 1 and says how to fix it when README.md's table is not the generated one."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import support_table

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{support_table.START}\n| family | stale |\n{support_table.END}\n")
    monkeypatch.setattr(support_table, "ROOT", tmp_path)
    monkeypatch.setattr(support_table, "generate", lambda: "| family | fresh |")
    assert support_table.main(["--check"]) == 1
    assert "out of date: run scripts/support_table.py --write" in capsys.readouterr().out
