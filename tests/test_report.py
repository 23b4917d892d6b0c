"""docs/benchmarks.md and docs/sizing.md are what bench/report.py and bench/sizing.py make of bench/results.

Their generated parts are never edited by hand.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script, page", [("report.py", "benchmarks.md"), ("sizing.py", "sizing.md")])
def test_each_page_is_regenerated_from_the_results_as_it_stands(tmp_path: Path, script: str, page: str) -> None:
    """The script rewrites the part above its marker from the JSON results and keeps the hand-written rest.

    A figure changed by hand above the marker, or a result file changed
    without regenerating the page, makes the two differ.
    """
    copy = tmp_path / page
    shutil.copy(ROOT / "docs" / page, copy)
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--output", str(copy)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    expected = (ROOT / "docs" / page).read_text()
    assert copy.read_text() == expected, f"docs/{page} differs from bench/{script}'s page: run bench/{script}"
