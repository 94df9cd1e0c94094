"""Installing, updating and removing extensions with git, their pip requirements, and Apply and restart.

An install clones into a hidden temporary folder beside the others (the loader skips names starting
with '.'), checks its studio-extension.json there, and only then renames it into place, so a
half-cloned or foreign repository is never found at the next start. git runs with no prompt, no hooks,
a timeout and only the protocols the URL check allows; pip only after the user confirms.

Everything that runs code from elsewhere is refused while the studio is reachable by others (--listen,
--share, --server-name) unless --enable-insecure-extension-access says otherwise, as in A1111.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from packaging.requirements import InvalidRequirement, Requirement

from backend.extensions.git_urls import (
    DEFAULT_SCHEMES,
    InstallRefused,
    check_branch,
    check_folder_name,
    check_git_url,
    redact_url,
    repo_name,
)
from backend.extensions.manifest import (
    MANIFEST,
    ExtensionManifest,
    ManifestError,
    read_manifest,
)

log = logging.getLogger(__name__)

GIT_TIMEOUT = 120.0  # seconds for one clone or fetch; a stalled server must not hold a UI worker forever
PIP_TIMEOUT = 1800.0  # some requirements build wheels


def extension_access_refusal(flags: Mapping[str, Any]) -> str | None:
    """Why installing, updating or removing extensions is refused with these command-line flags, or None.

    Others who can reach the page could otherwise make this machine run code of their choosing."""
    if flags.get("enable_insecure_extension_access"):
        return None
    exposed = [flag for flag, key in (("--listen", "listen"), ("--share", "share"), ("--server-name", "server_name"))
               if flags.get(key)]
    if not exposed:
        return None
    return (f"Installing, updating and removing extensions is off because the studio is reachable by others "
            f"({', '.join(exposed)}): an extension runs code on this machine. Start it with "
            "--enable-insecure-extension-access to allow it anyway.")


# --- requirements -------------------------------------------------------------------------------------

def check_requirements(requirements: Iterable[str]) -> list[str]:
    """The requirements as pip specifiers (`name[extra]>=1.0; marker`); raises InstallRefused naming each
    one that is not: pip options (`-r`, `--index-url`), URLs and `name @ url` forms are refused."""
    checked, problems = [], []
    for text in requirements:
        text = str(text).strip()
        if text.startswith("-"):
            problems.append(f"{text!r} starts with '-': pip would read it as an option")
            continue
        if "@" in text or "://" in text:
            problems.append(f"{text!r} names a URL: only package names and versions from the package index")
            continue
        try:
            checked.append(str(Requirement(text)))
        except InvalidRequirement as exc:
            problems.append(f"{text!r} is not a requirement pip reads ({exc})")
    if problems:
        raise InstallRefused("refused requirements: " + "; ".join(problems))
    return checked


# --- what git says about a folder ---------------------------------------------------------------------

@dataclass(frozen=True)
class GitInfo:
    remote: str | None = None  # origin's URL, without a user name or password
    branch: str | None = None
    commit_hash: str | None = None
    commit_date: int | None = None  # seconds since the epoch, as A1111's /sdapi/v1/extensions answers


def is_own_checkout(folder: Path) -> bool:
    """A git checkout of its own (`.git` right in it), not a folder inside the studio's repository."""
    return (Path(folder) / ".git").exists()


def git_info(folder: Path, git: str = "git", timeout: float = 5.0) -> GitInfo:
    """Remote URL, branch, commit and commit date of an extension folder that is its own git checkout;
    all None otherwise, or when git is missing or fails."""
    if not is_own_checkout(folder):
        return GitInfo()

    def ask(*args: str) -> str | None:
        try:
            done = subprocess.run([git, "-C", str(folder), *args], capture_output=True, text=True,
                                  timeout=timeout, env=_git_env(), check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return (done.stdout.strip() or None) if done.returncode == 0 else None

    head = ask("log", "-1", "--format=%H %ct")
    commit, _, date = (head or "").partition(" ")
    branch = ask("symbolic-ref", "--short", "-q", "HEAD")
    return GitInfo(remote=redact_url(ask("config", "--get", "remote.origin.url")), branch=branch,
                   commit_hash=commit or None, commit_date=int(date) if date.isdigit() else None)


def _git_env() -> dict[str, str]:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="", SSH_ASKPASS="")
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")  # ssh must not ask for a password either
    return env


# --- install, update, remove --------------------------------------------------------------------------

@dataclass
class InstallResult:
    folder: Path
    manifest: ExtensionManifest
    requirements: list[str] = field(default_factory=list)  # the manifest's, to show before pip runs
    requirement_problems: str = ""  # why pip would refuse them, when it would

    @property
    def message(self) -> str:
        return (f"Installed {self.manifest.title} {self.manifest.version} into {self.folder}. "
                "It loads after a restart.")


@dataclass
class UpdateResult:
    folder: Path
    commits: list[str]  # "<short hash> <subject>", newest first

    @property
    def message(self) -> str:
        if not self.commits:
            return f"{self.folder.name}: already up to date."
        return f"{self.folder.name}: {len(self.commits)} new commit(s); they load after a restart."


class ExtensionInstaller:
    def __init__(self, root: Path, builtin: Path | None = None, flags: Mapping[str, Any] | None = None,
                 allowed_schemes: Sequence[str] = DEFAULT_SCHEMES, git: str = "git", python: str = sys.executable,
                 timeout: float = GIT_TIMEOUT, pip_timeout: float = PIP_TIMEOUT) -> None:
        """`root`: the user's extensions folder, where installs go. `builtin`: the shipped folder, whose own
        extensions may only be disabled. `flags`: the command-line flags (see extension_access_refusal).
        `allowed_schemes` beyond https is for tests (a local bare repository through file://)."""
        self.root = Path(root).resolve()
        self.builtin = Path(builtin).resolve() if builtin else None
        self.flags = dict(flags or {})
        self.allowed_schemes = tuple(s.lower() for s in allowed_schemes)
        self.git, self.python = git, python
        self.timeout, self.pip_timeout = timeout, pip_timeout
        self._lock = threading.Lock()  # one change to the folders at a time (two installs of one name)

    @property
    def refusal(self) -> str | None:
        return extension_access_refusal(self.flags)

    def _check_access(self) -> None:
        if (why := self.refusal) is not None:
            raise InstallRefused(why)

    def install(self, url: str, branch: str = "", folder: str = "") -> InstallResult:
        """Clone `url` (at `branch`) into <root>/<folder or repo name>, if it is one of ours."""
        self._check_access()
        url = check_git_url(url, self.allowed_schemes)
        branch = check_branch(branch)
        name = check_folder_name(folder or repo_name(url))
        with self._lock:
            destination = self.root / name
            if destination.exists() or destination.is_symlink():
                raise InstallRefused(f"{destination} already exists: remove it first or give another folder name")
            self.root.mkdir(parents=True, exist_ok=True)
            temporary = Path(tempfile.mkdtemp(prefix=f".installing-{name}-", dir=self.root))
            try:
                self._clone(url, branch, temporary)
                manifest = self._check_clone(temporary, url)
                os.rename(temporary, destination)
            except BaseException:
                shutil.rmtree(temporary, ignore_errors=True)
                raise
        log.info("installed extension %s %s from %s into %s", manifest.id, manifest.version, redact_url(url),
                 destination)
        try:
            check_requirements(manifest.requirements)
            problems = ""
        except InstallRefused as exc:
            problems = str(exc)
        return InstallResult(destination, manifest, list(manifest.requirements), problems)

    def _clone(self, url: str, branch: str, into: Path) -> None:
        args = ["clone", "--depth", "1", "--no-recurse-submodules", "--quiet"]
        if branch:
            args += ["--branch", branch]
        self._run_git([*args, "--", url, str(into)], action=f"cloning {redact_url(url)}")

    def _check_clone(self, folder: Path, url: str) -> ExtensionManifest:
        if not (folder / MANIFEST).is_file():
            kind = "an A1111 extension (scripts/*.py), which this studio cannot run" \
                if any((folder / "scripts").glob("*.py")) else "not a studio extension"
            raise InstallRefused(f"{redact_url(url)} has no {MANIFEST}: it is {kind}. Nothing was installed.")
        try:
            manifest = read_manifest(folder)
        except ManifestError as exc:
            raise InstallRefused(f"its {MANIFEST} is not valid, nothing was installed: "
                                 f"{str(exc).replace(str(folder), '<clone>')}") from None
        for other in self._installed_folders():
            try:
                if read_manifest(other).id == manifest.id:
                    raise InstallRefused(f"an extension with the id {manifest.id!r} is already installed in "
                                         f"{other}. Nothing was installed.")
            except ManifestError:
                continue
        return manifest

    def _installed_folders(self) -> list[Path]:
        roots = dict.fromkeys(r for r in (self.builtin, self.root) if r is not None and r.is_dir())
        return [p for r in roots for p in sorted(r.iterdir())
                if p.is_dir() and not p.name.startswith((".", "_")) and (p / MANIFEST).is_file()]

    def removable(self, folder: Path) -> str | None:
        """Why `folder` may not be updated or removed here, or None: only folders right inside the user's
        extensions folder, and no shipped built-in (those may only be disabled)."""
        folder = Path(folder)
        if folder.is_symlink():
            return f"{folder} is a symbolic link; remove it by hand"
        resolved = folder.resolve()
        if self.builtin is not None and resolved.parent == self.builtin and not is_own_checkout(resolved):
            return f"{resolved.name} ships with the studio: it can be disabled, not removed or updated"
        if resolved.parent != self.root or resolved.name.startswith((".", "_")):
            return f"{folder} is not an extension folder in {self.root}"
        if not resolved.is_dir():
            return f"{folder} does not exist"
        return None

    def update(self, folder: Path) -> UpdateResult:
        """git fetch, then fast-forward only; the new commits, newest first (none: already up to date)."""
        self._check_access()
        folder = Path(folder)
        if (why := self.removable(folder)) is not None:
            raise InstallRefused(why)
        if not is_own_checkout(folder):
            raise InstallRefused(f"{folder.name} is not a git checkout (it was not installed from a URL), "
                                 "so it cannot be updated")
        with self._lock:
            if not self._git_out(folder, "symbolic-ref", "-q", "HEAD"):
                raise InstallRefused(f"{folder.name} is not on a branch (a tag or a commit was checked out)")
            before = self._git_out(folder, "rev-parse", "HEAD")
            self._run_git(["-C", str(folder), "fetch", "--no-recurse-submodules", "--quiet", "origin"],
                          action=f"fetching {folder.name}")
            self._run_git(["-C", str(folder), "merge", "--ff-only", "--quiet", "@{upstream}"],
                          action=f"fast-forwarding {folder.name} (local changes or a rewritten history stop it)")
            after = self._git_out(folder, "rev-parse", "HEAD")
        if before == after:
            return UpdateResult(folder, [])
        commits = self._git_out(folder, "log", "--format=%h %s", f"{before}..{after}").splitlines()
        log.info("updated extension %s: %d new commit(s)", folder.name, len(commits))
        return UpdateResult(folder, commits)

    def remove(self, folder: Path) -> str:
        """Delete an extension's folder (it is still loaded until the restart)."""
        self._check_access()
        folder = Path(folder)
        with self._lock:
            if (why := self.removable(folder)) is not None:
                raise InstallRefused(why)
            shutil.rmtree(folder.resolve())
        log.info("removed extension folder %s", folder)
        return f"Removed {folder.name}. It stays loaded until the studio restarts."

    def pip_install(self, requirements: Iterable[str]) -> Iterator[str]:
        """Run pip for these requirements in the studio's own environment, yielding its output line by line;
        the last line says how pip ended ("pip exited with code N")."""
        self._check_access()
        checked = check_requirements(requirements)
        if not checked:
            yield "Nothing to install."
            return
        command = [self.python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--", *checked]
        yield "$ " + " ".join(command[1:])
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              stdin=subprocess.DEVNULL, env=dict(os.environ, PIP_NO_INPUT="1")) as process:
            timer = threading.Timer(self.pip_timeout, process.kill)
            timer.daemon = True
            timer.start()
            try:
                for line in process.stdout:
                    yield line.rstrip("\n")
                code = process.wait()
            finally:
                timer.cancel()
                if process.poll() is None:
                    process.kill()  # the reader went away (the page closed): pip must not go on alone
        yield f"pip exited with code {code}" + ("" if code == 0 else " (it may have installed only part)")

    # --- running git ---

    def _git_config(self) -> list[str]:
        """Every protocol off but the allowed ones (ext::, file:// and the rest stay off), and no hooks."""
        args = ["-c", "core.hooksPath=/dev/null", "-c", "protocol.allow=never"]
        for scheme in sorted({*self.allowed_schemes, "ssh"}):
            args += ["-c", f"protocol.{scheme}.allow=always"]
        return args

    def _run_git(self, args: list[str], action: str) -> str:
        try:
            done = subprocess.run([self.git, *self._git_config(), *args], capture_output=True, text=True,
                                  timeout=self.timeout, env=_git_env(), stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise InstallRefused(f"{action}: git did not finish within {self.timeout:.0f} s") from None
        except OSError as exc:
            raise InstallRefused(f"{action}: git cannot run ({exc})") from None
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise InstallRefused(f"{action} failed: " + " / ".join(said or [f"git exited with {done.returncode}"]))
        return done.stdout

    def _git_out(self, folder: Path, *args: str) -> str:
        try:
            return self._run_git(["-C", str(folder), *args], action=f"git {args[0]}").strip()
        except InstallRefused:
            return ""


# --- Apply and restart --------------------------------------------------------------------------------

class _Queue(Protocol):
    def busy(self) -> bool: ...
    def waiting(self) -> int: ...


class _Restarter(Protocol):
    def restart(self) -> None: ...


def disabled_after(known: Mapping[str, str], enabled: Iterable[str], current: Iterable[str]) -> list[str]:
    """The new `disabled_extensions`: the ids in `known` (id -> folder name) not in `enabled`, plus what
    `current` lists that is not known here (an extension away for now keeps its choice)."""
    enabled = set(enabled)
    names = {name for pair in known.items() for name in pair}
    kept = [entry for entry in current if entry not in names]
    return sorted({*kept, *(ext for ext in known if ext not in enabled)})


def restart_when_idle(control: _Restarter, queue: _Queue, poll: float = 0.5, delay: float = 2.0) -> threading.Thread:
    """Restart (same command line) once the device has no job running or waiting; returns the waiting
    thread. A job that is half done is not thrown away for a settings change. `delay` first: the page
    that asked opens a connection for the answer, and a stopping server takes no new connections."""
    def wait_then_restart() -> None:
        time.sleep(delay)
        while queue.busy() or queue.waiting():
            time.sleep(poll)
        control.restart()

    thread = threading.Thread(target=wait_then_restart, name="restart-when-idle", daemon=True)
    thread.start()
    return thread
