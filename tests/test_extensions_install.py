"""Installing, updating and removing extensions with git (from a local bare repository: no network), the
checks in front of git and pip, the refusal while the studio is exposed, the index, Apply and restart."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from backend.extensions.git_urls import (
    InstallRefused,
    check_branch,
    check_folder_name,
    check_git_url,
    repo_name,
)
from backend.extensions.index import (
    SHIPPED_INDEX,
    index_source,
    is_installed,
    load_index,
    search,
)
from backend.extensions.installer import (
    ExtensionInstaller,
    check_requirements,
    disabled_after,
    extension_access_refusal,
    git_info,
    restart_when_idle,
)

GIT_ENV = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.invalid", GIT_CONFIG_NOSYSTEM="1")


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True).stdout


def manifest(ext_id: str, **extra) -> str:
    return json.dumps({"id": ext_id, "name": ext_id.title(), "version": "1.0.0", "api": ">=1.0,<2", **extra})


class Remote:
    """A bare repository in tmp_path and a working copy that pushes to it."""

    def __init__(self, tmp_path: Path, name: str, files: dict[str, str]) -> None:
        self.bare = tmp_path / "remotes" / f"{name}.git"
        self.work = tmp_path / "work" / name
        git("init", "--bare", "--quiet", "--initial-branch=main", str(self.bare))
        git("init", "--quiet", "--initial-branch=main", str(self.work))
        git("remote", "add", "origin", str(self.bare), cwd=self.work)
        self.commit("first", files)

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def commit(self, subject: str, files: dict[str, str], branch: str = "main") -> None:
        for name, text in files.items():
            (self.work / name).parent.mkdir(parents=True, exist_ok=True)
            (self.work / name).write_text(text)
        git("add", "-A", cwd=self.work)
        git("commit", "--quiet", "-m", subject, cwd=self.work)
        git("push", "--quiet", "origin", f"HEAD:{branch}", cwd=self.work)


@pytest.fixture
def remote(tmp_path) -> Remote:
    return Remote(tmp_path, "prompt-suffix", {"studio-extension.json": manifest("suffix", requirements=["tqdm>=4"]),
                                              "extension.py": "def register(api):\n    pass\n"})


@pytest.fixture
def installer(tmp_path) -> ExtensionInstaller:
    """file:// allowed, as only a test may ask; builtin is a separate shipped folder."""
    (tmp_path / "builtin").mkdir()
    return ExtensionInstaller(tmp_path / "data" / "extensions", builtin=tmp_path / "builtin",
                              allowed_schemes=("https", "file"), timeout=60)


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".")] if root.is_dir() else []


# --- install ------------------------------------------------------------------------------------------

def test_install_from_a_bare_repository_clones_checks_and_moves_into_place(installer, remote):
    result = installer.install(remote.url)
    assert result.folder == installer.root / "prompt-suffix" and (result.folder / "extension.py").is_file()
    assert result.manifest.id == "suffix" and result.requirements == ["tqdm>=4"] and not result.requirement_problems
    assert "loads after a restart" in result.message
    assert leftovers(installer.root) == []
    info = git_info(result.folder)
    assert info.remote == remote.url and info.branch == "main"
    assert info.commit_hash == git("rev-parse", "HEAD", cwd=remote.work).strip()
    assert isinstance(info.commit_date, int) and info.commit_date > 1_600_000_000
    # The same folder again is refused, and so is the same id under another folder name.
    with pytest.raises(InstallRefused, match="already exists"):
        installer.install(remote.url)
    with pytest.raises(InstallRefused, match="id 'suffix' is already installed"):
        installer.install(remote.url, folder="again")
    assert leftovers(installer.root) == []


def test_install_a_branch_into_a_folder_of_its_own_name(installer, remote):
    remote.commit("on dev", {"DEV": "x"}, branch="dev")
    result = installer.install(remote.url, branch="dev", folder="my-suffix")
    assert result.folder.name == "my-suffix" and (result.folder / "DEV").is_file()
    assert git_info(result.folder).branch == "dev"
    with pytest.raises(InstallRefused, match="cloning .* failed"):
        installer.install(remote.url, branch="no-such-branch", folder="other")
    assert leftovers(installer.root) == [] and not (installer.root / "other").exists()


@pytest.mark.parametrize("files, reason", [
    ({"README.md": "hello"}, "has no studio-extension.json: it is not a studio extension"),
    ({"scripts/thing.py": "print(1)"}, "an A1111 extension"),
    ({"studio-extension.json": '{"id": "Bad Id", "api": ">=1"}'}, "is not valid"),
])
def test_a_repository_that_is_not_one_of_ours_is_refused_and_leaves_nothing(tmp_path, installer, files, reason):
    other = Remote(tmp_path, "not-ours", files)
    with pytest.raises(InstallRefused, match=reason):
        installer.install(other.url)
    assert not (installer.root / "not-ours").exists() and leftovers(installer.root) == []


def test_requirements_that_pip_would_read_as_options_are_listed_as_refused(tmp_path, installer):
    sneaky = Remote(tmp_path, "sneaky", {"studio-extension.json": manifest("sneaky", requirements=[
        "numpy", "--index-url=https://evil.invalid/simple"]), "extension.py": "def register(api): pass\n"})
    result = installer.install(sneaky.url)
    assert "starts with '-'" in result.requirement_problems


# --- update and remove --------------------------------------------------------------------------------

def test_update_fast_forwards_and_lists_the_new_commits(installer, remote):
    folder = installer.install(remote.url).folder
    first = installer.update(folder)
    assert first.commits == [] and "already up to date" in first.message
    remote.commit("Add a style phrase", {"styles.txt": "ink"})
    remote.commit("Fix the phrase", {"styles.txt": "ink wash"})
    result = installer.update(folder)
    subjects = [line.split(" ", 1)[1] for line in result.commits]
    assert subjects == ["Fix the phrase", "Add a style phrase"] and "2 new commit(s)" in result.message
    assert (folder / "styles.txt").read_text() == "ink wash"
    assert git_info(folder).commit_hash == git("rev-parse", "HEAD", cwd=remote.work).strip()
    assert installer.update(folder).commits == []


def test_update_refuses_what_is_not_a_fast_forward(installer, remote):
    folder = installer.install(remote.url).folder
    (folder / "extension.py").write_text("def register(api):\n    print('edited here')\n")
    remote.commit("Change upstream", {"extension.py": "def register(api):\n    print('upstream')\n"})
    with pytest.raises(InstallRefused, match="fast-forwarding"):
        installer.update(folder)
    assert "edited here" in (folder / "extension.py").read_text()  # the user's edit is kept


def test_update_needs_a_git_checkout(installer):
    plain = installer.root / "plain"
    plain.mkdir(parents=True)
    with pytest.raises(InstallRefused, match="not a git checkout"):
        installer.update(plain)


def test_remove_deletes_only_user_extension_folders(tmp_path, installer, remote):
    folder = installer.install(remote.url).folder
    assert "stays loaded until the studio restarts" in installer.remove(folder)
    assert not folder.exists()
    shipped = installer.builtin / "shipped"
    shipped.mkdir()
    with pytest.raises(InstallRefused, match="ships with the studio"):
        installer.remove(shipped)
    with pytest.raises(InstallRefused, match="ships with the studio"):
        installer.update(shipped)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for outside in (elsewhere, installer.root / ".." / "elsewhere", installer.root):
        with pytest.raises(InstallRefused, match="not an extension folder"):
            installer.remove(outside)
    (installer.root / "link").symlink_to(elsewhere)
    with pytest.raises(InstallRefused, match="symbolic link"):
        installer.remove(installer.root / "link")
    assert shipped.is_dir() and elsewhere.is_dir()


def test_when_the_data_folder_is_the_studio_folder_shipped_extensions_stay_but_installed_ones_go(tmp_path, remote):
    root = tmp_path / "extensions"
    (root / "shipped").mkdir(parents=True)
    installer = ExtensionInstaller(root, builtin=root, allowed_schemes=("https", "file"))
    folder = installer.install(remote.url).folder
    with pytest.raises(InstallRefused, match="ships with the studio"):
        installer.remove(root / "shipped")
    installer.remove(folder)
    assert not folder.exists() and (root / "shipped").is_dir()


# --- refusal while exposed ----------------------------------------------------------------------------

@pytest.mark.parametrize("flags, named", [({"listen": True}, "--listen"), ({"share": True}, "--share"),
                                          ({"server_name": "0.0.0.0"}, "--server-name")])
def test_exposed_studios_refuse_installs_updates_removals_and_pip(tmp_path, installer, remote, flags, named):
    folder = installer.install(remote.url).folder
    exposed = ExtensionInstaller(installer.root, flags=flags, allowed_schemes=("https", "file"))
    why = extension_access_refusal(flags)
    assert named in why and "--enable-insecure-extension-access" in why and exposed.refusal == why
    for action in (lambda: exposed.install(remote.url, folder="second"), lambda: exposed.update(folder),
                   lambda: exposed.remove(folder), lambda: list(exposed.pip_install(["tqdm"]))):
        with pytest.raises(InstallRefused, match="reachable by others"):
            action()
    assert folder.is_dir() and not (installer.root / "second").exists()
    allowed = ExtensionInstaller(installer.root, flags={**flags, "enable_insecure_extension_access": True},
                                 allowed_schemes=("https", "file"))
    assert allowed.refusal is None and allowed.update(folder).commits == []
    assert extension_access_refusal({"listen": False, "share": False, "server_name": None}) is None


def test_the_launcher_has_the_override_flag():
    from launch import parse_args

    flags = vars(parse_args(["--listen", "--enable-insecure-extension-access"]))
    assert extension_access_refusal(flags) is None
    assert extension_access_refusal(vars(parse_args(["--listen"]))) is not None
    assert extension_access_refusal(vars(parse_args([]))) is None


# --- what git may be given ----------------------------------------------------------------------------

@pytest.mark.parametrize("url, reason", [
    ("file:///etc/some-repo", "scheme file:// is not allowed"),
    ("ext::sh -c touch% /tmp/pwned", "spaces or control characters"),
    ("ext::sh", "'<transport>::' form"),
    ("fd::17", "'<transport>::' form"),
    ("-oProxyCommand=touch /tmp/pwned", "starts with '-'"),
    ("--upload-pack=touch /tmp/pwned", "starts with '-'"),
    ("http://example.invalid/repo.git", "scheme http:// is not allowed"),
    ("ssh://example.invalid/repo.git", "scheme ssh:// is not allowed"),
    ("/home/me/repo", "not a URL git can clone safely"),
    ("https:///no-host", "names no host"),
    ("https://-oProxyCommand=x/repo", "host in"),
    ("git@host:-oProxyCommand=x", "path in"),
    ("", "no URL given"),
])
def test_forbidden_urls_are_refused_with_the_reason(url, reason):
    with pytest.raises(InstallRefused, match=reason):
        check_git_url(url)


def test_https_and_scp_style_urls_pass_and_name_their_folder():
    assert check_git_url(" https://github.com/owner/repo.git ") == "https://github.com/owner/repo.git"
    assert check_git_url("git@github.com:owner/repo.git") == "git@github.com:owner/repo.git"
    assert repo_name("https://github.com/owner/repo.git") == "repo"
    assert repo_name("git@github.com:owner/other") == "other"
    assert check_git_url("file:///tmp/r.git", ("https", "file")) == "file:///tmp/r.git"  # tests only


def test_the_apps_installer_allows_https_only_and_git_itself_refuses_file(tmp_path, installer, remote):
    folder = installer.install(remote.url).folder
    app_like = ExtensionInstaller(installer.root)
    assert app_like.allowed_schemes == ("https",)
    with pytest.raises(InstallRefused, match="scheme file:// is not allowed"):
        app_like.install(remote.url, folder="again")
    # The checkout's origin is file://: git's own protocol list stops the fetch too.
    with pytest.raises(InstallRefused, match="fetching .* failed"):
        app_like.update(folder)


@pytest.mark.parametrize("branch", ["-x", "--upload-pack=touch /tmp/pwned", "a..b", "a b", "main.lock", "/main"])
def test_unsafe_branches_are_refused(branch):
    with pytest.raises(InstallRefused):
        check_branch(branch)


@pytest.mark.parametrize("folder, reason", [("../escape", "without '/'"), ("a/b", "without '/'"), ("..", "'..'"),
                                            ("a\\b", "without '/'"), ("-rf", "starts with '-'"),
                                            (".hidden", "loader skips"), ("_private", "loader skips"),
                                            ("a;b", "may hold only")])
def test_unsafe_folder_names_are_refused(folder, reason):
    with pytest.raises(InstallRefused, match=reason):
        check_folder_name(folder)


def test_a_refused_folder_name_or_branch_leaves_nothing(tmp_path, installer, remote):
    with pytest.raises(InstallRefused):
        installer.install(remote.url, folder="../escape")
    with pytest.raises(InstallRefused):
        installer.install(remote.url, branch="--upload-pack=touch x")
    assert not (tmp_path / "data" / "escape").exists() and leftovers(installer.root) == []
    assert check_branch("feature/v1.2") == "feature/v1.2" and check_branch("") == ""


# --- requirements and pip -----------------------------------------------------------------------------

def test_requirements_are_pip_specifiers_and_nothing_else():
    assert check_requirements(["numpy>=1.26", "Pillow", "tqdm[notebook]==4.66; python_version>='3.8'"]) == [
        "numpy>=1.26", "Pillow", 'tqdm[notebook]==4.66; python_version >= "3.8"']
    for bad in ("-r other.txt", "--index-url=https://evil.invalid", "-e .", "pkg @ https://evil.invalid/p.whl",
                "git+https://evil.invalid/p.git", "pkg --extra-index-url x", "not a requirement!!"):
        with pytest.raises(InstallRefused, match="refused requirements"):
            check_requirements([bad])


def _fake_python(tmp_path: Path, code: int) -> str:
    script = tmp_path / f"fake-python-{code}"
    script.write_text(f"#!/bin/sh\necho \"args: $*\"\necho collecting\nexit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_pip_runs_in_the_studios_environment_with_its_log_streamed(tmp_path):
    ok = ExtensionInstaller(tmp_path / "ext", python=_fake_python(tmp_path, 0))
    lines = list(ok.pip_install(["tqdm>=4", "numpy"]))
    assert "args: -m pip install --disable-pip-version-check --no-input -- tqdm>=4 numpy" in lines
    assert "collecting" in lines and lines[-1] == "pip exited with code 0"
    failing = ExtensionInstaller(tmp_path / "ext", python=_fake_python(tmp_path, 3))
    assert list(failing.pip_install(["tqdm"]))[-1].startswith("pip exited with code 3")
    with pytest.raises(InstallRefused):
        list(ok.pip_install(["--pre", "tqdm"]))


# --- git facts for the extensions list ----------------------------------------------------------------

def test_git_info_is_empty_for_folders_that_are_not_their_own_checkout(tmp_path):
    outer = tmp_path / "outer"
    git("init", "--quiet", str(outer))
    (outer / "ext").mkdir()
    assert git_info(outer / "ext") == git_info(tmp_path / "missing")
    assert git_info(outer / "ext").remote is None and git_info(outer / "ext").commit_hash is None


def test_git_info_hides_credentials_in_the_remote(installer, remote):
    folder = installer.install(remote.url).folder
    git("remote", "set-url", "origin", "https://user:token@example.invalid/o/r.git", cwd=folder)
    assert git_info(folder).remote == "https://example.invalid/o/r.git"


# --- the index ----------------------------------------------------------------------------------------

def test_the_shipped_index_is_in_a1111s_format_with_example_entries_only():
    data = json.loads(SHIPPED_INDEX.read_text())
    assert set(data) >= {"tags", "extensions"}
    index = load_index(str(SHIPPED_INDEX))
    assert index.entries and all(e.url.startswith("https://example.invalid/") for e in index.entries)
    assert all("not a real project" in e.description and "example" in e.tags for e in index.entries)
    assert all(set(e.tags) <= set(index.tags) for e in index.entries)


def test_index_search_tags_and_installed_marks():
    index = load_index(str(SHIPPED_INDEX))
    assert [e.name for e in search(index.entries, "JOB log")] == ["Example: job log"]
    assert [e.name for e in search(index.entries, tags=["tab", "api"])] == ["Example: wildcard tab"]
    log_entry = search(index.entries, "job log")[0]
    assert is_installed(log_entry, ["https://EXAMPLE.invalid/studio-extensions/job-log"], [])
    assert is_installed(log_entry, [], ["job-log"]) and not is_installed(log_entry, [None], ["other"])
    assert log_entry not in search(index.entries, hide_installed=True, installed=[log_entry])


def test_the_index_source_option_and_loading_by_url(tmp_path):
    from backend.settings import OptionsStore

    own = tmp_path / "own-index.json"
    own.write_text(json.dumps({"tags": {"x": "X"}, "extensions": [
        {"name": "Mine", "url": "https://example.invalid/mine.git", "tags": ["x"], "added": "2026-12-02"},
        {"name": "no url"}]}))
    store = OptionsStore(tmp_path / "config.json")
    store.load()
    assert index_source(store) == str(SHIPPED_INDEX)  # the default: nothing is fetched at start
    (tmp_path / "config.json").write_text(json.dumps({"extensions_index_url": str(own)}))
    store.load()
    assert index_source(store) == str(own)
    loaded = load_index(index_source(store))
    assert [e.name for e in loaded.entries] == ["Mine"] and loaded.skipped == 1
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        by_url = load_index(f"http://127.0.0.1:{server.server_address[1]}/own-index.json", timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert [e.name for e in by_url.entries] == ["Mine"]
    from backend.extensions.index import IndexReadError

    with pytest.raises(IndexReadError, match="cannot read"):
        load_index(str(tmp_path / "missing.json"))
    with pytest.raises(IndexReadError, match="only http"):
        load_index("ftp://example.invalid/index.json")


def test_the_index_url_is_a_setting_of_settings_and_the_api_and_the_tab_follows_it(tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from backend.api.routes import create_api_router
    from backend.app_context import AppPaths, build_app_context
    from backend.devices import DeviceSettings
    from backend.settings import Options
    from ui.extensions_tab import index_to_load
    from ui.settings_tab import HIDDEN

    assert "extensions_index_url" in Options.model_fields and "extensions_index_url" not in HIDDEN  # a widget
    (tmp_path / "models").mkdir()
    ctx = build_app_context(AppPaths(root=tmp_path, builtin_checkpoints=[]), DeviceSettings.from_flags(device="cpu", precision="full"))
    app = FastAPI()
    app.include_router(create_api_router(ctx), prefix="/sdapi/v1")
    client = TestClient(app)
    assert client.get("/sdapi/v1/options").json()["extensions_index_url"] == ""
    assert index_source(ctx.options) == str(SHIPPED_INDEX)
    # What the page's box was given at load, untouched: Load index follows the setting as it is now.
    assert index_to_load(ctx, str(SHIPPED_INDEX), str(SHIPPED_INDEX)) == (str(SHIPPED_INDEX), True)

    own = str(tmp_path / "own-index.json")
    assert client.post("/sdapi/v1/options", json={"extensions_index_url": own}).json() is True
    assert client.get("/sdapi/v1/options").json()["extensions_index_url"] == own
    assert json.loads((tmp_path / "config.json").read_text())["extensions_index_url"] == own
    assert index_source(ctx.options) == own
    assert index_to_load(ctx, str(SHIPPED_INDEX), str(SHIPPED_INDEX)) == (own, True)
    assert index_to_load(ctx, "", str(SHIPPED_INDEX)) == (own, True)
    typed = "https://example.invalid/index.json"  # typed over in the box: that one, this once
    assert index_to_load(ctx, f" {typed} ", own) == (typed, False)
    assert client.post("/sdapi/v1/options", json={"extensions_index_url": 3}).status_code == 422
    ctx.options.update(extensions_index_url="")  # as the Settings tab saves it
    assert index_source(ctx.options) == str(SHIPPED_INDEX)


# --- Apply and restart --------------------------------------------------------------------------------

def test_disabled_after_keeps_choices_for_extensions_away_for_now():
    known = {"good": "good-folder", "other": "other"}
    assert disabled_after(known, ["other"], ["away", "good-folder"]) == ["away", "good"]
    assert disabled_after(known, ["good", "other"], ["good", "other"]) == []


def test_restart_waits_until_no_job_runs_or_waits():
    running, waiting = iter([True, True, False, False]), iter([2, 0])
    asked: list[str] = []

    def busy() -> bool:
        asked.append("busy")
        return next(running, False)

    queue = SimpleNamespace(busy=busy, waiting=lambda: next(waiting, 0))
    restarted = threading.Event()
    restart_when_idle(SimpleNamespace(restart=restarted.set), queue, poll=0.01, delay=0).join(timeout=10)
    assert restarted.is_set() and len(asked) == 4  # two polls while a job ran, one while two waited


def _fake_ctx(tmp_path: Path, flags: dict | None = None, control=None):
    from backend.extensions import load_extensions
    from backend.settings import OptionsStore

    root = tmp_path / "studio"
    for name in ("alpha", "beta"):
        (root / "extensions" / name).mkdir(parents=True)
        (root / "extensions" / name / "studio-extension.json").write_text(manifest(name))
        (root / "extensions" / name / "extension.py").write_text("def register(api): pass\n")
    store = OptionsStore(root / "config.json")
    store.load()
    queue = SimpleNamespace(busy=lambda: False, waiting=lambda: 0)
    return SimpleNamespace(root=root, options=store, command_flags=flags or {}, server_control=control,
                           extensions=load_extensions([root / "extensions"]), service=SimpleNamespace(queue=queue))


def test_apply_writes_a1111s_keys_and_restarts_when_it_can(tmp_path):
    from ui.extensions_tab import apply_and_restart, enabled_choices, make_installer

    restarted = threading.Event()
    ctx = _fake_ctx(tmp_path, control=SimpleNamespace(restart=restarted.set))
    choices, enabled = enabled_choices(ctx)
    assert [c[1] for c in choices] == ["alpha", "beta"] and enabled == ["alpha", "beta"]
    message, restarting = apply_and_restart(ctx, make_installer(ctx), ["beta"], False)
    assert restarting == "yes" and "alpha disabled" in message and restarted.wait(10)
    saved = json.loads((ctx.root / "config.json").read_text())
    assert saved["disabled_extensions"] == ["alpha"] and saved["disable_all_extensions"] == "none"
    assert enabled_choices(ctx)[1] == ["beta"]
    ctx.server_control = None
    message, restarting = apply_and_restart(ctx, make_installer(ctx), ["alpha", "beta"], True)
    assert restarting == "" and "not available" in message
    assert json.loads((ctx.root / "config.json").read_text())["disable_all_extensions"] == "all"
    exposed = _fake_ctx(tmp_path / "exposed", flags={"share": True})
    message, restarting = apply_and_restart(exposed, make_installer(exposed), [], False)
    assert restarting == "" and "--share" in message and not (exposed.root / "config.json").exists()


def test_the_tab_lists_new_installs_and_refuses_to_remove_without_the_tick(tmp_path, remote):
    from ui.extensions_tab import (
        extension_rows,
        folder_choices,
        install_from,
        remove_folder,
    )

    ctx = _fake_ctx(tmp_path)
    installer = ExtensionInstaller(ctx.root / "extensions", allowed_schemes=("https", "file"))
    message, requirements, pending = install_from(installer, remote.url)
    assert "Installed" in message and "tqdm>=4" in requirements and pending.requirements == ["tqdm>=4"]
    rows = {row[0]: row for row in extension_rows(ctx)}
    assert rows["Suffix"][2] == "installed: loads after a restart" and rows["Suffix"][5] == remote.url
    assert "prompt-suffix" in [label for label, _ in folder_choices(ctx, installer)]
    folder = str(ctx.root / "extensions" / "prompt-suffix")
    assert "Tick" in remove_folder(installer, folder, False) and Path(folder).is_dir()
    assert "Removed" in remove_folder(installer, folder, True) and not Path(folder).exists()
    assert install_from(installer, "ext::sh")[0].startswith("Not installed:")
