"""Headless Chromium (Debian's package), installed on first use when missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,900", "--virtual-time-budget=20000",
]  # fmt: skip


def chromium_binary() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is missing and this machine has no apt-get to install it")
    env_ok = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
    install = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "chromium"],
        capture_output=True, timeout=900, env={"DEBIAN_FRONTEND": "noninteractive",
                                               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )  # fmt: skip
    found = shutil.which("chromium")
    if not found:
        detail = (env_ok.stderr + install.stderr).decode(errors="replace")[-500:]
        raise RuntimeError(f"could not install Debian's chromium: {detail}")
    return found


def render(url: str, profile: Path, screenshot: Path) -> str:
    """The page's DOM after its scripts ran, and a screenshot of it."""
    binary = chromium_binary()
    base = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, timeout=120, text=True)
    return dom.stdout
