"""The Extensions tab in a real browser: the Available list reads the Extension index URL setting; untick an
extension, Apply and restart; launch.py runs again with the same flags (same process, execv), the page reloads
by itself and lists the extension as disabled, and the old process logged no cancelled stream."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from backend.extensions.index import SHIPPED_INDEX
from tests.fixtures.launched import launched_process
from tests.test_browser import NEEDS_CHROMIUM, _studio_page

pytestmark = pytest.mark.browser


def _write_extension(root: Path, ext_id: str) -> None:
    folder = root / ext_id
    folder.mkdir(parents=True)
    (folder / "studio-extension.json").write_text(json.dumps({"id": ext_id, "name": ext_id.title(),
                                                              "version": "1.0.0", "api": ">=1.0,<2"}))
    (folder / "extension.py").write_text("def register(api):\n    pass\n")


@pytest.fixture
def studio_with_extensions(tmp_path):
    models = tmp_path / "Stable-diffusion"
    models.mkdir()
    for ext_id in ("alpha", "beta"):
        _write_extension(tmp_path / "extensions", ext_id)
    for url, process in launched_process(tmp_path, models):
        yield url, process, tmp_path


def _row(page, title: str):
    return page.locator("#extensions_installed").get_by_role("row").filter(has_text=title).first


def _own_index(data_dir: Path) -> Path:
    own = data_dir / "own-index.json"
    own.write_text(json.dumps({"extensions": [{"name": "Mine", "url": "https://example.invalid/mine.git"}]}))
    return own


def _browse_the_index_and_refuse_a_file_url(page, url: str, data_dir: Path) -> None:
    """Load index reads the Extension index URL setting as it is now (here set through the API after the
    page loaded), or what is typed in the box; the shipped index filters by words and tags; the app clones
    https only."""
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Available").click()
    index = page.locator("#extensions_index")
    source = page.locator("#extensions_index_source textarea")
    expect(source).to_have_value(str(SHIPPED_INDEX))
    own = _own_index(data_dir)
    assert httpx.post(f"{url}sdapi/v1/options", json={"extensions_index_url": str(own)}).json() is True
    page.locator("#extensions_index_load").click()
    expect(page.locator("#extensions_index_note")).to_contain_text(f"1 extension(s) in {own}", timeout=30_000)
    expect(source).to_have_value(str(own))
    source.fill(str(SHIPPED_INDEX))  # typed over: read this once, the setting stays
    page.locator("#extensions_index_load").click()
    expect(page.locator("#extensions_index_note")).to_contain_text("3 extension(s)", timeout=30_000)
    expect(index.get_by_role("row").filter(has_text="example.invalid")).to_have_count(3)
    page.locator("#extensions_index_search textarea").fill("job log")
    expect(index.get_by_role("row").filter(has_text="example.invalid")).to_have_count(1, timeout=30_000)
    page.locator("#extensions_index_search textarea").fill("")
    page.locator("#extensions_index_tags").get_by_label("tab: Adds a tab to the UI").check()
    expect(index.get_by_role("row").filter(has_text="example.invalid")).to_have_count(1, timeout=30_000)
    expect(index).to_contain_text("Example: wildcard tab")

    page.get_by_role("tab", name="Install from URL").click()
    page.locator("#extensions_url textarea").fill((data_dir / "extensions" / "alpha").as_uri())
    page.locator("#extensions_install").click()
    expect(page.locator("#extensions_install_result")).to_contain_text("file:// is not allowed", timeout=30_000)


@NEEDS_CHROMIUM
def test_disable_an_extension_apply_and_restart_and_the_page_comes_back(studio_with_extensions):
    from playwright.sync_api import expect

    url, process, data_dir = studio_with_extensions
    with _studio_page(url, "studio-demo.safetensors") as page:
        page.get_by_role("tab", name="Extensions").click()
        expect(page.locator("#extensions_warning")).to_contain_text("runs with your own rights")
        expect(_row(page, "Alpha")).to_contain_text("loaded")
        _browse_the_index_and_refuse_a_file_url(page, url, data_dir)
        page.get_by_role("tab", name="Installed").click()
        page.locator("#extensions_enabled").get_by_label("Alpha", exact=True).uncheck()
        with page.expect_navigation(timeout=120_000):  # the page reloads once the new process serves it
            page.locator("#extensions_apply").click()
            expect(page.locator("#extensions_apply_result")).to_contain_text("restarts", timeout=30_000)
        assert process.poll() is None  # the same process, run again in place
        page.get_by_role("tab", name="Extensions").click(timeout=60_000)
        expect(_row(page, "Alpha")).to_contain_text("disabled", timeout=30_000)
        expect(_row(page, "Beta")).to_contain_text("loaded")
        enabled = page.locator("#extensions_enabled")
        expect(enabled.get_by_label("Alpha", exact=True)).not_to_be_checked()
        expect(enabled.get_by_label("Beta", exact=True)).to_be_checked()
        page.get_by_role("tab", name="Available").click()
        own = str(data_dir / "own-index.json")
        expect(page.locator("#extensions_index_source textarea")).to_have_value(own)  # the setting, kept
    saved = json.loads((data_dir / "config.json").read_text())
    assert saved["disabled_extensions"] == ["alpha"] and saved["extensions_index_url"] == own
    log = (data_dir / "launch.log").read_text()
    assert log.count("Running on local URL") == 2
    # The old process ended the open page's Gradio streams itself: uvicorn did not wait out its graceful
    # shutdown for them, then cancel them with a traceback.
    assert "Traceback" not in log and "CancelledError" not in log and "graceful shutdown exceeded" not in log
