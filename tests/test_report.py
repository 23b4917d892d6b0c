"""docs/benchmarks.md is what bench/report.py makes of bench/results: its generated part is never edited by hand."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_benchmarks_page_is_regenerated_from_the_results_as_it_stands(tmp_path: Path) -> None:
    """report.py rewrites the part above its marker from the JSON results and keeps the hand-written rest.

    A figure changed by hand above the marker, or a result file changed
    without regenerating the page, makes the two differ.
    """
    page = tmp_path / "benchmarks.md"
    shutil.copy(ROOT / "docs" / "benchmarks.md", page)
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "report.py"), "--output", str(page)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    expected = (ROOT / "docs" / "benchmarks.md").read_text()
    assert page.read_text() == expected, "docs/benchmarks.md differs from bench/report.py's page: run bench/report.py"
