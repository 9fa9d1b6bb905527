"""The documentation site as a reader's browser shows it. Builds the site, serves it on
127.0.0.1 and opens every page in headless Chromium (Debian's `chromium`, driven by Playwright),
then says what a reader would trip over:

- a request to anything outside the site (a CDN script, a web font), or a browser console error;
- a table wider than its column (it would scroll or clip), or a code name in a table cell broken
  across lines ("required_c / omponents");
- a code block without a language (no highlighting), or one whose longest line runs past the
  column;
- a literal Markdown escape (`\\|`) left in the text, or an image that did not load.

    python -m devtools.docs_check            # exit 0: nothing found; 1: each problem, one a line

Run before a release (the development page says how to install Chromium and Playwright);
`tests/system/test_docs.py` runs it wherever both are installed.
"""

import argparse
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
# What a reader's screen gives the article column: a laptop's window.
VIEWPORT = {"width": 1280, "height": 900}
# Without the background-networking switches Chromium keeps dialing Google's hosts, which a
# closed network refuses (and which would count as requests outside the site).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Runs in the page: every problem as one short sentence.
PROBLEMS_ON_THE_PAGE = r"""
() => {
  const problems = [];
  const article = document.querySelector("article");
  const overflows = (element) => element.scrollWidth > element.clientWidth + 1;
  for (const table of article.querySelectorAll("table")) {
    if (overflows(table) || table.getBoundingClientRect().width > article.clientWidth + 1) {
      const head = table.querySelector("th") ? table.querySelector("th").textContent : "";
      problems.push(`a table is wider than its column (first heading "${head}")`);
    }
    for (const code of table.querySelectorAll("td code, th code")) {
      const text = code.textContent;
      if (!/\s/.test(text) && code.getClientRects().length > 1) {
        problems.push(`"${text}" is broken across lines in a table`);
      }
    }
  }
  for (const pre of article.querySelectorAll("pre")) {
    const block = pre.closest("div.highlight");
    const first = pre.textContent.trim().split("\n")[0].slice(0, 60);
    if (!block || ![...block.classList].some((name) => name.startsWith("language-"))) {
      problems.push(`a code block has no language: "${first}"`);
    }
    const code = pre.querySelector("code") || pre;
    if (overflows(code)) {
      problems.push(`a code block runs past its column: "${first}"`);
    }
  }
  if (article.textContent.includes("\\|")) {
    problems.push("a literal \\| is shown");
  }
  for (const image of article.querySelectorAll("img")) {
    if (!image.complete || image.naturalWidth === 0) {
      problems.push(`an image did not load: ${image.getAttribute("src")}`);
    }
  }
  return problems;
}
"""


def build_site(site: Path) -> None:
    mkdocs = Path(sys.executable).with_name("mkdocs")
    subprocess.run(
        [str(mkdocs), "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=True,
    )


@contextmanager
def served(site: Path) -> Iterator[str]:
    """The built site over HTTP on a free local port (the browser's origin)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(site))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def pages(site: Path) -> list[str]:
    """Every page's path below the site's root: "" for the home page, "signing/" and so on."""
    folders = (path.relative_to(site).parent for path in site.rglob("index.html"))
    return sorted("" if folder == Path(".") else f"{folder}/" for folder in folders)


def problems(site: Path) -> list[str]:
    from playwright.sync_api import ConsoleMessage, Route, sync_playwright

    found: list[str] = []
    loading = ""  # the page being loaded: what the browser's callbacks report against

    def only_the_site(route: Route) -> None:
        if route.request.url.startswith(origin):
            route.continue_()
        else:
            found.append(f"{loading}: loads {route.request.url} from outside the site")
            route.abort()

    def console_errors(message: ConsoleMessage) -> None:
        if message.type == "error":
            found.append(f"{loading}: console error: {message.text}")

    with served(site) as origin, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.route("**/*", only_the_site)
        page.on("console", console_errors)
        for path in pages(site):
            loading = path.rstrip("/") or "index"
            page.goto(origin + path, wait_until="load")
            found += [f"{loading}: {problem}" for problem in page.evaluate(PROBLEMS_ON_THE_PAGE)]
        browser.close()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    if not shutil.which(CHROMIUM):
        print(f"{CHROMIUM} is missing: apt-get install chromium", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        site = Path(folder) / "site"
        build_site(site)
        found = problems(site)
    for problem in found:
        print(problem)
    print(f"{len(found)} problems" if found else "the site reads right in Chromium")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
