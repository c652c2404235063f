"""A device image for one agent process: private copies of the library files it maps that the
bench host shares with its other processes, so the agent's RSS is the one a device would see.

Why: the agent hands its clean library pages back after start (`MADV_PAGEOUT`,
`budgets.reclaim_clean_pages`), and the kernel skips a page that another process maps too. On
a device the agent is the only process that maps libpython and its extension modules; on the
bench host the gateway, the broker's clients and the bench process map the same files, so an
agent started from the venv keeps ~17 MB of pages a device would hand back. A copy is a new
inode: its pages are the agent's alone.

What the image holds (`build`):

* `lib/`: libpython (`INSTSONAME`). The interpreter finds it by its RUNPATH, which
  `LD_LIBRARY_PATH` overrides (RUNPATH, unlike RPATH, comes after it).
* `dynload/`: every extension module of the stdlib's `lib-dynload`.
* `site/`: the top-level entries of site-packages (a package dir, a `<dist>.libs` dir of
  bundled libraries, a top-level `.so`) that hold a file the agent maps, found by a probe that
  imports the agent's modules (`probe`); whole entries, so their layout (`$ORIGIN` paths,
  relative loads, data files) holds.

`DeviceImage.env` puts `site/` and `dynload/` ahead of everything on `PYTHONPATH`: the
interpreter imports those packages from the copies. The editable project is not copied (its
`.py` files are read, not mapped), nor are the dist-info dirs (`importlib.metadata` reads the
venv's), nor the system libraries (libc, libcrypto, libssl, libsqlite3, libstdc++): a device
shares those with its other processes too, so leaving them shared is the conservative side.
`DeviceImage.originals` lists what a process still maps from the host's copies; an agent run
from an image checks it is empty. Copies are fsynced: the kernel's page-out does not write back
dirty file pages, so unsynced copies would stay resident where a device's files would not.
Building one takes ~1 s for the thin agent, a few for the full one (numpy, onnxruntime).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import firmware_profiles
from bench.rss_breakdown import THIN_CHAIN

LIBPYTHON = Path(str(sysconfig.get_config_var("LIBDIR"))) / str(
    sysconfig.get_config_var("INSTSONAME")
)
DYNLOAD = Path(str(sysconfig.get_config_var("DESTSHARED")))
SITE = Path(sysconfig.get_paths()["platlib"])
MODEL_CHAIN = ("agent.model.scoring", "numpy", "onnxruntime")
"""What a full (`ranking = "local"`) agent imports beyond the thin chain."""


class ImageError(RuntimeError):
    """The image cannot be built, or a process started from it maps the host's files."""


def is_host_shared(path: str) -> bool:
    """A mapped file the bench host's other processes map too: libpython, an extension
    module of lib-dynload, anything under site-packages."""
    return path == str(LIBPYTHON) or path.startswith((f"{DYNLOAD}/", f"{SITE}/"))


def mapped_files(maps: str) -> list[str]:
    """The distinct file paths of a `/proc/PID/maps` text, in order of first mapping."""
    seen: dict[str, None] = {}
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            seen.setdefault(parts[5], None)
    return list(seen)


def site_entries(paths: Iterable[str]) -> list[str]:
    """The top-level names under site-packages that hold any of `paths`, sorted."""
    names = {Path(p).relative_to(SITE).parts[0] for p in paths if p.startswith(f"{SITE}/")}
    return sorted(names)


def probe_modules(profile: str) -> tuple[str, ...]:
    """The modules an `edgemart agent run --profile <profile>` imports, as far as they map
    libraries: the thin chain, and the model's for a profile that ranks locally."""
    path = firmware_profiles.profile_path(profile)
    try:
        ranking = tomllib.loads(path.read_text()).get("ranking", "local")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ImageError(f"cannot read the firmware profile {profile!r} ({path}): {exc}") from exc
    return THIN_CHAIN if ranking == "thin" else THIN_CHAIN + MODEL_CHAIN


def probe(modules: Iterable[str]) -> list[str]:
    """The host-shared files a fresh interpreter maps after importing `modules`."""
    code = (
        "import importlib, sys\n"
        "for m in sys.argv[1:]: importlib.import_module(m)\n"
        "sys.stdout.write(open('/proc/self/maps').read())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *modules], check=True, capture_output=True, text=True
    ).stdout
    return [p for p in mapped_files(out) if is_host_shared(p)]


def _copy_synced(src: str, dst: str) -> str:
    """`shutil.copy2`, then fsync a shared library: written back before a process maps it
    (the other files are read, not mapped: their dirty pages are no process's RSS)."""
    shutil.copy2(src, dst)
    if ".so" not in Path(dst).name:
        return dst
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return dst


@dataclass(frozen=True, slots=True)
class DeviceImage:
    """A built image under `root`; `env` starts a python from it."""

    root: Path
    entries: tuple[str, ...]
    """The site-packages entries copied into `site/`."""

    @property
    def lib(self) -> Path:
        return self.root / "lib"

    @property
    def site(self) -> Path:
        return self.root / "site"

    @property
    def dynload(self) -> Path:
        return self.root / "dynload"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) with the image ahead on
        `PYTHONPATH` and `LD_LIBRARY_PATH`."""
        env = dict(os.environ if base is None else base)
        for key, first in (
            ("PYTHONPATH", [self.site, self.dynload]),
            ("LD_LIBRARY_PATH", [self.lib]),
        ):
            rest = [env[key]] if env.get(key) else []
            env[key] = os.pathsep.join([*map(str, first), *rest])
        return env

    def originals(self, pid: int | str) -> list[str]:
        """The host-shared files process `pid` maps (empty for a process run from this image
        that imported nothing the image lacks)."""
        maps = Path(f"/proc/{pid}/maps").read_text()
        return [p for p in mapped_files(maps) if is_host_shared(p)]

    def check(self, pid: int | str) -> None:
        """Raise `ImageError` naming the host files process `pid` maps, if any."""
        leaked = self.originals(pid)
        if leaked:
            raise ImageError(
                f"process {pid} maps {len(leaked)} host file(s) not in the image {self.root}"
                f" (its RSS would carry shared pages): {', '.join(leaked[:5])}"
            )


def build(root: Path, entries: Iterable[str]) -> DeviceImage:
    """Copy libpython, lib-dynload and the site-packages `entries` into `root` (new, empty)."""
    names = tuple(sorted(set(entries)))
    missing = [n for n in names if not (SITE / n).exists()]
    if missing:
        raise ImageError(f"not in {SITE}: {', '.join(missing)}")
    image = DeviceImage(root, names)
    for folder in (image.lib, image.site, image.dynload):
        folder.mkdir(parents=True)
    _copy_synced(str(LIBPYTHON), str(image.lib / LIBPYTHON.name))
    for so in DYNLOAD.glob("*.so"):
        _copy_synced(str(so), str(image.dynload / so.name))
    for name in names:
        src = SITE / name
        if src.is_dir():
            # __pycache__ too: copy2 keeps the sources' mtimes, so the .pyc files stay valid
            shutil.copytree(src, image.site / name, copy_function=_copy_synced)
        else:
            _copy_synced(str(src), str(image.site / name))
    return image


@contextlib.contextmanager
def device_image(modules: Iterable[str]) -> Iterator[DeviceImage]:
    """An image for a process that imports `modules`, in a temp dir deleted afterwards."""
    entries = site_entries(probe(modules))
    with tempfile.TemporaryDirectory(prefix="edgemart-image-") as tmp:
        yield build(Path(tmp), entries)
