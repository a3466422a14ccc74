"""The doc site in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.

Builds the site with `execute=False` (API docs only) except for one small notebook that is executed,
then checks what a reader does: the home page loads, a search for "observer" finds the observers page
and its link opens, the executed page shows its plot, and no internal link of any page is broken.
Skipped, with the reason, when chromium or playwright is not installed (`.ci/run` installs both).
"""
import os, re, shutil, threading, time
from functools import partial
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urljoin, urlparse, unquote

import pytest

CHROMIUM = os.environ.get('KLTN_CHROMIUM') or shutil.which('chromium') or '/usr/bin/chromium'
EXECUTED = '02_schemes.ipynb'   # small, quick to run, draws plots
ARGS = ['--no-sandbox', '--disable-background-networking', '--disable-dev-shm-usage']

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"chromium not found at {CHROMIUM}: `apt-get install -y chromium` (or set KLTN_CHROMIUM)")


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "The site, built once for every test of this module; the build time is printed."
    pytest.importorskip('playwright', reason='playwright is not installed: pip install -e ".[dev]"')
    if os.environ.get('KLTN_DOCS_SITE'): return Path(os.environ['KLTN_DOCS_SITE'])   # a site built already (with 02_schemes executed)
    from kltn_qat.docs import build_docs
    d = tmp_path_factory.mktemp('docs')
    t0 = time.time()
    out = build_docs(d/'site', execute=False, execute_glob=EXECUTED, cache=d/'cache')
    print(f'site built in {time.time()-t0:.0f} s')
    return out


@pytest.fixture(scope='module')
def server(site):
    "The site served on a local port (as GitHub Pages would serve it)."
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), partial(_QuietHandler, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.fixture(scope='module')
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    "A fresh page that records failed requests (not those aborted by leaving the page: search fetches each hit's page) and requests that leave the machine."
    pg = browser.new_page()
    pg.failed, pg.outside = [], []
    pg.on('requestfailed', lambda r: None if 'ERR_ABORTED' in (r.failure or '') else pg.failed.append(f'{r.url}: {r.failure}'))
    pg.on('response', lambda r: pg.failed.append(f'{r.url}: HTTP {r.status}') if r.status >= 400 else None)
    pg.on('request', lambda r: None if r.url.startswith((server, 'data:', 'blob:')) else pg.outside.append(r.url))
    yield pg
    pg.close()


def test_home_page_loads(page, server):
    page.goto(server + 'index.html')
    assert 'kltn_qat' in page.title()
    assert page.locator('h1').first.inner_text().startswith('kltn_qat')
    nav = page.locator('nav.bd-docs-nav a.reference')   # the sidebar lists every notebook
    hrefs = [nav.nth(i).get_attribute('href') for i in range(nav.count())]
    assert '03_observers.html' in hrefs and any(h.startswith('tutorials/') for h in hrefs), hrefs
    assert page.failed == [] and page.outside == [], (page.failed, page.outside)


def test_search_finds_observers(page, server):
    page.goto(server + 'search.html')
    page.fill('#search-input, input[name="q"] >> nth=-1', 'observer')
    page.keyboard.press('Enter')
    hit = page.locator('#search-results a[href*="03_observers.html"]').first
    hit.wait_for(timeout=30_000)
    hit.click()
    page.wait_for_load_state()
    assert urlparse(page.url).path.endswith('/03_observers.html'), page.url
    assert page.locator('h1').first.inner_text().startswith('Observers')
    assert page.failed == [] and page.outside == [], (page.failed, page.outside)


def test_executed_page_shows_its_plot(page, server):
    page.goto(server + EXECUTED.replace('.ipynb', '.html'))
    imgs = page.locator('div.cell_output img')
    assert imgs.count() > 0, 'no plot on the executed page'
    imgs.first.scroll_into_view_if_needed()
    page.wait_for_function('img => img.complete && img.naturalWidth > 0', arg=imgs.first.element_handle())
    assert page.failed == [], page.failed


class _Links(HTMLParser):
    "Every href/src and every id of one HTML page."
    def __init__(self):
        super().__init__(); self.links, self.ids = [], set()
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.add(a['id'])
        if tag == 'a' and a.get('name'): self.ids.add(a['name'])
        for k in ('href', 'src'):
            if a.get(k) and not (tag == 'link' and k == 'href' and 'preload' in (a.get('rel') or '')): self.links.append(a[k])


def test_no_broken_internal_link(site):
    pages = {}
    for f in site.rglob('*.html'):
        if f.relative_to(site).parts[0] == '_static': continue   # the theme's template sources, not pages
        p = _Links(); p.feed(f.read_text(encoding='utf-8')); pages[f] = p
    broken = []
    for f, p in pages.items():
        base = f.relative_to(site).as_posix()
        for url in p.links:
            u = urlparse(url)
            if u.scheme or url.startswith(('//', 'mailto:', 'javascript:')): continue
            target = (site/unquote(urljoin(base, u.path))).resolve() if u.path else f
            if target.is_dir(): target = target/'index.html'
            if not target.exists(): broken.append(f'{base}: {url} (no file)'); continue
            if u.fragment and target.suffix == '.html' and target in pages and unquote(u.fragment) not in pages[target].ids:
                broken.append(f'{base}: {url} (no anchor)')
    assert not broken, f'{len(broken)} broken internal links:\n' + '\n'.join(broken[:40])
