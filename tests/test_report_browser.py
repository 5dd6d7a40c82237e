"""The report as a browser shows it: headless Chromium loads every section and every image.

Needs Debian's ``chromium`` package (CI: ``apt-get install -y chromium``); skipped without it.
Set VQKIT_REPORT_SCREENSHOT=FILE.png to keep the screenshot for a look.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from report_helpers import ALL_SECTIONS, copy_run, make_full_run, open_png, parse_page

from vqkit.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BROWSER = next((path for name in BROWSERS if (path := shutil.which(name))), None)
WINDOW = (1200, 3000)
TIMEOUT_S = 90
# Waits in the page's virtual time so every embedded image has decoded before the DOM dump.
VIRTUAL_TIME_MS = 5000
# Added to a copy of the report only (the report itself has no scripts): the browser marks each
# image it could decode, and marks the body once the page has loaded.
IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  for (const img of document.images)
    img.setAttribute("data-decoded", img.complete && img.naturalWidth > 0 ? "yes" : "no");
  document.body.setAttribute("data-loaded", "yes");
});
</script></body>"""

pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="Chromium is not installed (Debian: apt-get install -y chromium)"
)


def run_browser(profile: Path, *args: str) -> str:
    command = [
        BROWSER,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def report(small_run, tmp_path_factory) -> Path:
    run = make_full_run(copy_run(small_run.run_dir, tmp_path_factory.mktemp("browser") / "run"))
    return write_report(run)


def loaded_dom(text: str, folder: Path) -> str:
    """The DOM of ``text`` (HTML) after the browser loaded it, with images marked by IMAGE_CHECK."""
    checked = folder / "checked.html"
    checked.write_text(text.replace("</body>", IMAGE_CHECK))
    dom = run_browser(
        folder / "profile",
        f"--virtual-time-budget={VIRTUAL_TIME_MS}",
        "--dump-dom",
        checked.as_uri(),
    )
    assert 'data-loaded="yes"' in dom
    return dom


def test_image_check_catches_a_broken_image(report, tmp_path):
    # Control: corrupt the first embedded PNG's data; the browser must flag exactly that one.
    text = report.read_text()
    start = text.index("data:image/png;base64,") + len("data:image/png;base64,")
    broken = text[:start] + "AAAA" + text[start + 4 :]
    dom = loaded_dom(broken, tmp_path)
    assert dom.count('data-decoded="no"') == 1


def test_browser_loads_every_section_and_image(report, tmp_path):
    dom = loaded_dom(report.read_text(), tmp_path)
    page = parse_page(dom)
    assert [i for i in page.ids if i in ALL_SECTIONS] == list(ALL_SECTIONS)
    images = dom.count("<img ")
    assert images == len(page.images) > 10
    assert dom.count('data-decoded="yes"') == images and 'data-decoded="no"' not in dom


def test_screenshot_is_a_rendered_page(report, tmp_path):
    shot = tmp_path / "report.png"
    run_browser(
        tmp_path / "profile",
        f"--screenshot={shot}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        report.as_uri(),
    )
    image = open_png(shot.read_bytes())
    assert image.size == WINDOW
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    # A blank or error page is (nearly) one colour; the report has text, plots and digits.
    assert pixels.std() > 20
    assert (pixels < 64).mean() > 0.01  # dark ink: text and the digits' black backgrounds
    if target := os.environ.get("VQKIT_REPORT_SCREENSHOT"):
        shutil.copyfile(shot, target)
