"""`bench.device_image`: an image holds private copies (new inodes, same bytes) of libpython,
lib-dynload and the chosen site-packages entries, and a python started with its environment
imports those packages from the copies and maps none of the host's files; the figures of
`thin_agent_rss_mb` rest on that."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.device_image import (
    DYNLOAD,
    LIBPYTHON,
    SITE,
    DeviceImage,
    ImageError,
    build,
    is_host_shared,
    mapped_files,
    site_entries,
)

CHILD = """
import json, sys
import _ssl, cryptography.hazmat.bindings._rust as rust, pydantic_core
from bench.device_image import DeviceImage
from pathlib import Path
image = DeviceImage(Path(sys.argv[1]), ())
print(json.dumps({
    "pydantic_core": pydantic_core.__file__, "rust": rust.__file__, "ssl": _ssl.__file__,
    "maps": open("/proc/self/maps").read(), "originals": image.originals("self"),
}))
"""


def _same_bytes_new_inode(original: Path, copy: Path) -> bool:
    return copy.stat().st_ino != original.stat().st_ino and filecmp.cmp(
        original, copy, shallow=False
    )


@pytest.mark.integration  # a python started from the image (under 1 s with the copying)
def test_a_python_started_from_the_image_maps_the_copies_not_the_hosts(tmp_path: Path) -> None:
    entries = ["_cffi_backend.cpython-311-x86_64-linux-gnu.so", "cryptography", "pydantic_core"]
    image = build(tmp_path / "img", [e for e in entries if (SITE / e).exists()])
    libpython = image.lib / LIBPYTHON.name
    core_so = next((SITE / "pydantic_core").glob("_pydantic_core*.so"))
    assert _same_bytes_new_inode(LIBPYTHON, libpython)
    assert _same_bytes_new_inode(core_so, image.site / "pydantic_core" / core_so.name)
    ssl_so = next(DYNLOAD.glob("_ssl.*.so"))
    assert _same_bytes_new_inode(ssl_so, image.dynload / ssl_so.name)

    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(image.root)],
        env=image.env(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    child = json.loads(out)
    assert child["pydantic_core"].startswith(f"{image.site}/pydantic_core/")
    assert child["rust"].startswith(f"{image.site}/cryptography/")
    assert child["ssl"].startswith(f"{image.dynload}/")
    assert str(libpython) in mapped_files(child["maps"])
    assert child["originals"] == []


def test_an_entry_not_in_site_packages_is_refused_before_anything_is_copied(
    tmp_path: Path,
) -> None:
    with pytest.raises(ImageError, match="zz_no_such_package"):
        build(tmp_path / "img", ["zz_no_such_package"])
    assert not (tmp_path / "img").exists()


def test_the_host_files_a_process_maps_name_the_entries_to_copy() -> None:
    maps = "\n".join(
        [
            f"7f00-7f01 r-xp 00000000 fd:00 1 {SITE}/numpy/_core/_multiarray.so",
            f"7f01-7f02 r--p 00000000 fd:00 2 {SITE}/numpy.libs/libopenblas.so",
            f"7f02-7f03 r--p 00000000 fd:00 2 {SITE}/numpy.libs/libopenblas.so",
            f"7f03-7f04 r-xp 00000000 fd:00 3 {LIBPYTHON}",
            "7f04-7f05 r-xp 00000000 fd:00 4 /usr/lib/x86_64-linux-gnu/libc.so.6",
            "7f05-7f06 rw-p 00000000 00:00 0 [heap]",
            "7f06-7f07 rw-p 00000000 00:00 0",
        ]
    )
    files = mapped_files(maps)
    assert len(files) == 4  # one per file, no [heap], no anonymous mapping
    shared = [f for f in files if is_host_shared(f)]
    assert shared == files[:3]  # libc stays shared, as on a device
    assert site_entries(shared) == ["numpy", "numpy.libs"]


def test_the_image_goes_ahead_of_the_callers_paths() -> None:
    image = DeviceImage(Path("/img"), ())
    env = image.env({"PYTHONPATH": "/work/repo", "HOME": "/root"})
    assert env["PYTHONPATH"] == "/img/site:/img/dynload:/work/repo"
    assert env["LD_LIBRARY_PATH"] == "/img/lib"
    assert env["HOME"] == "/root"
