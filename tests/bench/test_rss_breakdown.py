"""`python -m bench.rss_breakdown without PKG,...`: the finder it installs refuses exactly the
blocked top-level packages (their submodules too) and nothing else, so the what-if it prints
is charged to those packages and what needs them."""

from __future__ import annotations

import importlib
import sys

import pytest

from bench.rss_breakdown import _Block


def test_the_blocking_finder_refuses_only_the_blocked_packages() -> None:
    block = _Block(frozenset({"colorsys", "zz_not_a_package"}))
    block.find_spec("graphlib")  # not blocked: no error, the next finder decides
    block.find_spec("colorsys_like")  # a prefix of a name is not the name
    with pytest.raises(ImportError, match=r"zz_not_a_package\.sub"):
        block.find_spec("zz_not_a_package.sub")
    saved = sys.modules.pop("colorsys", None)
    sys.meta_path.insert(0, block)
    try:
        with pytest.raises(ImportError, match="blocked by rss_breakdown: colorsys"):
            importlib.import_module("colorsys")
        importlib.import_module("graphlib")  # anything else imports as usual
    finally:
        sys.meta_path.remove(block)
        if saved is not None:
            sys.modules["colorsys"] = saved
