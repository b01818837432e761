"""The report as a browser renders it: headless Chromium loads the report of a real cache, and the
assertions read the rendered page (decoded images, laid-out index and histograms), not the HTML source.

The report itself has no scripts. A copy of it gets one probe script that runs after the load event and
writes what the browser computed (each image's ``naturalWidth``, the index's rendered rows and links,
the histogram's laid-out width) into the DOM, which ``--dump-dom`` then returns.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.inspection.command import run_inspect

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.querySelectorAll('img')].map(i => ({
    alt: i.alt, complete: i.complete, natural: i.naturalWidth, shown: i.getBoundingClientRect().width}));
  const links = [...document.querySelectorAll('table.index a')];
  const out = {
    imgs,
    index_rows: document.querySelectorAll('table.index tr').length - 1,
    index_targets_found: links.filter(a => document.getElementById(decodeURIComponent(a.hash.slice(1)))).length,
    index_links: links.length,
    context_spans: document.querySelectorAll('.ctx').length,
  };
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    """The Chromium binary; ``.ci/setup`` installs it, so only a machine set up some other way skips."""
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    pytest.skip(f"{CHROMIUM} is absent: bash .ci/setup installs it (apt-get install -y chromium)")


def render(page: Path, tmp_path: Path, *extra: str) -> str:
    result = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *extra, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_report_renders_images_index_and_histograms(default_cache: Path, tmp_path: Path) -> None:
    root = Path(yaml.safe_load(default_cache.read_text())["custom"]["teacher_cache"]) / "train"
    report = tmp_path / "report.html"
    assert run_inspect(root, html=report, limit=6) == 0
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    dom = render(probed, tmp_path, "--dump-dom", "--virtual-time-budget=5000")
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    out = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    thumbs = [i for i in out["imgs"] if i["alt"].startswith("image ")]
    hist = [i for i in out["imgs"] if i["alt"] == "histograms"]
    assert len(thumbs) == 6 and all(i["complete"] and i["natural"] == 168 for i in thumbs), thumbs
    assert len(hist) == 1 and hist[0]["natural"] > 600 and hist[0]["shown"] > 400, hist
    assert out["index_rows"] == 48 and out["index_links"] == 48  # every cached row, each a link
    assert out["index_targets_found"] == 6  # links of the rows shown in full land on their sections
    assert out["context_spans"] > 6 * 5
    shot = tmp_path / "shot.png"
    render(report, tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", "--hide-scrollbars")
    assert shot.is_file() and shot.stat().st_size > 20_000  # a page with content, not a blank one
