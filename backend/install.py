"""Install what is missing before anything heavy is imported (standard library only).

`python launch.py` and `python launch.py --test` call this first, so a fresh
machine needs no other setup command. Packages already at the pinned version
are left alone, so a second start does nothing and costs nothing.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_PIN = re.compile(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*==\s*([^\s;#]+)")
CHROMIUM = Path("/usr/bin/chromium")


def missing_requirements(requirements: Path) -> list[str]:
    """The pinned lines of a requirements file whose package is absent or at another version."""
    missing = []
    for line in requirements.read_text().splitlines():
        match = _PIN.match(line)
        if not match:
            continue
        name, wanted = match.group(1).split("[")[0], match.group(2)
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed is None or installed.split("+")[0] != wanted:
            missing.append(f"{name}=={wanted}")
    return missing


def ensure_requirements(*requirement_files: Path) -> None:
    missing = [line for f in requirement_files for line in missing_requirements(f)]
    if not missing:
        return
    print(f"Installing {len(missing)} missing package(s): {', '.join(missing)}", flush=True)
    args = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check"]
    for f in requirement_files:
        args += ["-r", str(f)]
    subprocess.check_call(args)


def ensure_chromium() -> Path | None:
    """Debian's Chromium for the browser test; installed with apt-get when we may, else None."""
    if CHROMIUM.exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    is_root = hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0
    if not (apt and is_root):
        print("Chromium is not installed and apt-get cannot run here: the browser test will be skipped. "
              "Install Debian's 'chromium' package to run it.", flush=True)
        return None
    print("Installing Debian's chromium for the browser test...", flush=True)
    subprocess.check_call([apt, "update", "-qq"])
    subprocess.check_call([apt, "install", "-y", "-qq", "chromium"])
    return CHROMIUM if CHROMIUM.exists() else None
