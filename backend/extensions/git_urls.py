"""What the installer lets git see: URLs, branch names and folder names, each checked before git runs.

git reads an argument starting with `-` as an option (`--upload-pack=...`, `-oProxyCommand=...` run a
command), `<transport>::<address>` runs a remote helper (`ext::sh -c ...` runs anything), and `file://`
reads this machine's own repositories. So only `https://` URLs and scp-style `user@host:path` (ssh)
pass; a test may allow `file` too, by asking for it explicitly.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

DEFAULT_SCHEMES = ("https",)


class InstallRefused(ValueError):
    """An install, update or removal that is not done; the message says why."""


_TRANSPORT = re.compile(r"^[A-Za-z0-9+.\-]+::")
_SCP = re.compile(r"^(?P<user>[A-Za-z0-9_][A-Za-z0-9_.\-]*)@(?P<host>[A-Za-z0-9][A-Za-z0-9.\-]*):(?P<path>[^:]+)$")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")  # whitespace and control characters: no URL needs them
_BRANCH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./\-]*$")
_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]{0,99}$")


def check_git_url(url: str, allowed_schemes: tuple[str, ...] = DEFAULT_SCHEMES) -> str:
    """The URL, stripped, if git may clone it; raises InstallRefused saying why not."""
    url = (url or "").strip()
    if not url:
        raise InstallRefused("no URL given")
    if url.startswith("-"):
        raise InstallRefused(f"the URL {url!r} starts with '-': git would read it as an option")
    if _CONTROL.search(url):
        raise InstallRefused("the URL contains spaces or control characters")
    if _TRANSPORT.match(url):
        raise InstallRefused(f"the URL {url!r} uses the '<transport>::' form, which runs a git remote helper "
                             "(ext:: runs any command); give an https:// URL")
    if "://" not in url:
        return _check_scp(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in allowed_schemes:
        allowed = " or ".join(f"{s}://" for s in allowed_schemes)
        raise InstallRefused(f"the URL scheme {scheme}:// is not allowed; give a {allowed} URL "
                             "(or user@host:path for ssh)")
    if scheme != "file" and not parts.hostname:
        raise InstallRefused(f"the URL {url!r} names no host")
    if (parts.hostname or "").startswith("-"):
        raise InstallRefused(f"the host in {url!r} starts with '-'")
    return url


def _check_scp(url: str) -> str:
    """user@host:path, which git clones over ssh."""
    match = _SCP.match(url)
    if not match:
        raise InstallRefused(f"{url!r} is not a URL git can clone safely: give https://host/owner/repo "
                             "or git@host:owner/repo")
    if match["path"].startswith("-"):
        raise InstallRefused(f"the path in {url!r} starts with '-'")
    return url


def check_branch(branch: str) -> str:
    """The branch (or tag) stripped, "" for the remote's default; raises InstallRefused for unsafe names."""
    branch = (branch or "").strip()
    if not branch:
        return ""
    if branch.startswith("-"):
        raise InstallRefused(f"the branch {branch!r} starts with '-': git would read it as an option")
    if not _BRANCH.match(branch) or ".." in branch or branch.endswith((".", "/", ".lock")) or "//" in branch:
        raise InstallRefused(f"{branch!r} is not a branch name (letters, digits, _ . / - ; no '..')")
    return branch


def check_folder_name(name: str) -> str:
    """A folder name for <extensions>/<name>: one path component, no '..', not hidden from the loader."""
    name = (name or "").strip()
    if not name:
        raise InstallRefused("no folder name")
    if name.startswith("-"):
        raise InstallRefused(f"the folder name {name!r} starts with '-'")
    if "/" in name or "\\" in name or ".." in name:
        raise InstallRefused(f"the folder name {name!r} must be a single folder name, without '/', '\\' or '..'")
    if name.startswith((".", "_")):
        raise InstallRefused(f"the folder name {name!r} starts with '.' or '_': the loader skips such folders")
    if not _FOLDER.match(name):
        raise InstallRefused(f"the folder name {name!r} may hold only letters, digits and _ . + - "
                             "(at most 100)")
    return name


def repo_name(url: str) -> str:
    """The folder name git would pick: the URL's last path part without `.git`."""
    path = urlsplit(url).path if "://" in url else url.rpartition(":")[2]
    last = path.rstrip("/").rpartition("/")[2]
    return last.removesuffix(".git")


def redact_url(url: str | None) -> str | None:
    """The URL without a user name or password, for lists anyone using the page can see."""
    if not url or "://" not in url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def same_repository(a: str | None, b: str | None) -> bool:
    """Whether two clone URLs name one repository (case of the host, a trailing / or .git aside)."""
    def key(url: str) -> str:
        url = (redact_url(url.strip()) or "").rstrip("/").removesuffix(".git").lower()
        return url.split("://", 1)[-1]
    return bool(a and b) and key(a) == key(b)
