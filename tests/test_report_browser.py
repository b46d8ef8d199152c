"""The report as a person sees it (issue 15, item 11): a real run's report.html opened in
headless Chromium (Debian's `chromium`; CI installs it, elsewhere the tests skip and say so).

A copy of the report gets a small probe: an error listener first in <head> and, on load, a JSON
verdict written into <pre id="probe">, read back from `--dump-dom`. It records every resource
that failed to load and every script error, each <img>'s natural and rendered size, each inline
<svg>'s box (Graphviz figures, when the report has them), and every request that was not a
data: URI (the report must be self-contained). A second Chromium call screenshots the unchanged
report. The probe is checked against deliberately broken copies, so it can fail."""
import base64
import html
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest


def _find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


CHROMIUM = _find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium, chromium-browser or google-chrome on PATH: the browser test of report.html needs "
           "one (Debian: apt-get install chromium; .ci/run installs it)")

# Offline and quiet: no first-run, sync, component or extension traffic; every host name fails
# to resolve, so a stray external URL fails fast instead of reaching (or waiting on) a network.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000"]
TIMEOUT_S = 120
WINDOW = (1280, 2000)

PROBE_HEAD = """<script>window.__probe = {errors: []};
function __url(t) { return String(t.currentSrc || (typeof t.src === 'string' && t.src) || (typeof t.href === 'string' && t.href)
  || t.getAttribute('href') || t.getAttribute('xlink:href') || t.getAttribute('data') || '').slice(0, 100); }
addEventListener('error', function (e) {
  var t = e.target;
  if (t && t !== window && t.tagName) __probe.errors.push('failed to load: <' + t.tagName.toLowerCase() + '> ' + __url(t));
  else __probe.errors.push('script error: ' + e.message + ' (line ' + e.lineno + ')');
}, true);
addEventListener('unhandledrejection', function (e) { __probe.errors.push('unhandled rejection: ' + e.reason); });
(function () { var c = console.error; console.error = function () {
  __probe.errors.push('console.error: ' + [].join.call(arguments, ' ')); return c.apply(console, arguments); }; })();
</script>"""

PROBE_TAIL = """<pre id="probe"></pre><script>addEventListener('load', function () {
  var r = {errors: __probe.errors, images: [], svgs: [], requests: [], references: []};
  [].forEach.call(document.images, function (i) {
    var b = i.getBoundingClientRect();
    r.images.push({alt: i.alt, src: __url(i), complete: i.complete, natural: [i.naturalWidth, i.naturalHeight], box: [b.width, b.height]});
  });
  [].forEach.call(document.querySelectorAll('svg'), function (s) {
    if (s.ownerSVGElement) return;  // a nested <svg> is part of its outer one
    var b = s.getBoundingClientRect();
    var f = s.closest('figure'), inner = s.querySelector('[id]');  // Graphviz ids carry the figure's name
    r.svgs.push({label: s.id || (f && f.id) || s.getAttribute('aria-label') || (inner && inner.id) || '', box: [b.width, b.height]});
  });
  performance.getEntriesByType('resource').forEach(function (e) { if (e.name.indexOf('data:') !== 0) r.requests.push(e.name); });
  [].forEach.call(document.querySelectorAll('[src], [srcset], link[href], object[data], video[poster], image, use, feImage'), function (t) {
    var u = t.getAttribute('src') || t.getAttribute('srcset') || t.getAttribute('data') || t.getAttribute('poster')
      || t.getAttribute('href') || t.getAttribute('xlink:href') || '';
    if (u && u.indexOf('data:') !== 0 && u.charAt(0) !== '#') r.references.push('<' + t.tagName.toLowerCase() + '> ' + u.slice(0, 100));
  });
  document.getElementById('probe').textContent = JSON.stringify(r);
});</script>"""


def _chromium(*args: str) -> str:
    """Run Chromium with a fresh profile and a timeout (its whole process group is killed on
    expiry); its stdout, or a failure carrying the end of its stderr."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-", ignore_cleanup_errors=True) as profile:
        cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"chromium took over {TIMEOUT_S} s: {' '.join(cmd)}")
    noise = ("dbus", "unexpected operator")  # no system bus in CI; Debian's launcher's /dev/shm check
    err_tail = "\n".join(ln for ln in err.splitlines() if not any(n in ln for n in noise))[-3000:]
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}: {' '.join(cmd)}\n{err_tail}"
    return out


def probe(report_html: str, folder: Path, name: str = "report.probe.html") -> dict:
    """Open a probed copy of `report_html`, written to `folder` (next to what its relative links
    would reach), and return the probe's verdict."""
    text, n_head = re.subn(r"<head\b[^>]*>", lambda m: m.group(0) + PROBE_HEAD, report_html, count=1)
    head, sep, tail = text.rpartition("</body>")
    assert n_head == 1 and sep, "report.html has no <head> or no </body> to put the probe in"
    page = folder / name
    page.write_text(head + PROBE_TAIL + sep + tail, encoding="utf-8")
    dom = _chromium("--dump-dom", page.as_uri())
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m and m.group(1), ("the probe left no verdict: the page's load event never came, or inline scripts "
                              "are blocked (a Content-Security-Policy?)")
    return json.loads(html.unescape(m.group(1)))


def referenced_pngs(report_md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", report_md)


def problems(verdict: dict, pngs: list[str]) -> list[str]:
    """Everything a reader would miss or a self-contained file must not do; [] when all is well."""
    out = list(verdict["errors"])
    for i, img in enumerate(verdict["images"]):
        what = f"<img> {i} ({img['alt'] or img['src'][:40]})"
        if not img["complete"]:
            out.append(f"{what} did not finish loading")
        if min(img["natural"]) <= 0:
            out.append(f"{what} not decoded (natural size {img['natural']})")
        if min(img["box"]) <= 0:
            out.append(f"{what} rendered with an empty box {img['box']}")
    for i, svg in enumerate(verdict["svgs"]):
        if min(svg["box"]) <= 0:
            out.append(f"<svg> {i} ({svg['label']}) rendered with an empty box {svg['box']}")
    out += [f"external request: {u}" for u in verdict["requests"]]
    out += [f"reference outside the file: {u}" for u in verdict["references"]]
    # report.md shows each figure as a PNG; report.html as an <img> named by its alt, or as an
    # inline <svg> (Graphviz drawings), named where its ids carry the file's stem.
    shown = len(verdict["images"]) + len(verdict["svgs"])
    if shown < len(pngs):
        out.append(f"fewer figures (<img> + inline <svg>: {shown}) than PNG files the report references ({len(pngs)})")
    alts = {img["alt"] for img in verdict["images"]}
    labels = [svg["label"] for svg in verdict["svgs"]]
    unmatched = [p for p in pngs if Path(p).stem not in alts
                 and not any(lb == Path(p).stem or lb.startswith(Path(p).stem + "_") for lb in labels)]
    matched_svgs = sum(any(lb == Path(p).stem or lb.startswith(Path(p).stem + "_") for p in pngs) for lb in labels)
    if len(unmatched) > len(labels) - matched_svgs:
        out.append(f"no <img> or inline <svg> for: {', '.join(unmatched)}")
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A small real run (tracr-reverse, five methods with reset controls, no bootstrap), its
    report.html and report.md, and the probe's verdict on the untouched report."""
    from harness.cli import main

    out = tmp_path_factory.mktemp("browser") / "out"
    assert main(["-q", "run", "--tasks", "tracr-reverse", "--methods", "act-patch-edge", "eap", "grad-wrong", "random",
                 "structure", "--bootstrap", "0", "--no-progress", "--out", str(out)]) == 0
    text = (out / "report.html").read_text(encoding="utf-8")
    return {"out": out, "html": text, "pngs": referenced_pngs((out / "report.md").read_text(encoding="utf-8")),
            "verdict": probe(text, out)}


def test_every_image_and_svg_renders_and_nothing_fails_to_load(report):
    v, pngs = report["verdict"], report["pngs"]
    assert pngs, "report.md references no figures: the run drew nothing"
    assert problems(v, pngs) == []
    assert v["images"] and len(v["images"]) + len(v["svgs"]) >= len(pngs)


def test_every_embedded_image_decodes_completely_at_the_size_the_browser_shows(report):
    # A truncated PNG is drawn by the browser as far as it goes, without an error event; decoding
    # each one in full catches it, and the sizes tie each data URI to the <img> the probe measured.
    from PIL import Image

    srcs = []

    class Imgs(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "img":
                srcs.append(dict(attrs).get("src") or "")

    Imgs().feed(report["html"])
    assert len(srcs) == len(report["verdict"]["images"])
    for src, seen in zip(srcs, report["verdict"]["images"]):
        m = re.match(r"data:image/(png|jpeg|gif|webp);base64,(.*)", src, re.S)
        if not m:
            continue  # SVG and others: the browser's own check above covers them
        im = Image.open(io.BytesIO(base64.b64decode(m.group(2), validate=True)))
        im.load()  # raises on a truncated or corrupt file
        assert list(im.size) == seen["natural"], seen["alt"]


def test_a_screenshot_shows_the_report(report):
    from PIL import Image

    shot = report["out"] / "report.screenshot.png"
    _chromium(f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", (report["out"] / "report.html").as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot
    im = Image.open(shot)
    assert im.size == WINDOW, (im.size, shot)
    grey = im.convert("L")
    hist = grey.histogram()
    background = max(hist)
    assert background < 0.99 * sum(hist), f"the screenshot is (nearly) one flat colour: {shot}"
    assert len(im.convert("RGB").getcolors(maxcolors=1 << 24)) > 50, f"too few colours for text and figures: {shot}"


def _drop_last_img(text):
    i = text.rindex("<img ")
    return text[:i] + text[text.index(">", i) + 1:]


BROKEN = {
    # name: (how the copy is broken, a problem the probe must report)
    "corrupt-data-uri": (lambda t: t.replace(";base64,iVBORw0KGgo", ";base64,AAAAAAAAAA", 1), "not decoded"),
    "missing-file": (lambda t: t.replace("<body>", '<body><img alt="gone" src="gone.png">', 1), "failed to load: <img>"),
    "external-url": (lambda t: t.replace("<body>", '<body><img alt="remote" src="https://example.com/x.png">', 1),
                     "reference outside the file: <img> https://example.com/x.png"),
    "script-error": (lambda t: t.replace("<body>", "<body><script>notDefinedAnywhere()</script>", 1), "script error"),
    "empty-svg": (lambda t: t.replace("<body>", '<body><svg width="40" height="20"><rect width="40" height="20"/></svg>'
                                                '<svg id="flat" width="0" height="0"></svg>', 1), "<svg> 1 (flat)"),
    "hidden-images": (lambda t: t.replace("</head>", "<style>img{display:none}</style></head>", 1), "empty box"),
    "image-dropped": (_drop_last_img, "fewer figures"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_the_probe_reports_a_broken_copy(report, case, tmp_path):
    breaks, expected = BROKEN[case]
    text = breaks(report["html"])
    assert text != report["html"], f"{case}: the report changed and this case no longer breaks it"
    found = problems(probe(text, tmp_path), report["pngs"])
    assert any(expected in f for f in found), (expected, found)
    if case == "empty-svg":
        assert sum("<svg>" in f for f in found) == 1, found  # the drawn one passes
