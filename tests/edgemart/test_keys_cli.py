"""`edgemart keys ...` (issue 14): the operator's verbs over the key ring, each audited; the
gateway signs with the active key and never reads the root file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud_gateway.security import keys_ring
from cloud_gateway.security.keys import load_or_create
from edgemart.cli import main
from protocol.envelopes import TrustFile


def test_init_add_activate_revoke_and_rotate_root_leave_an_audited_signed_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, root = tmp_path / "gw", tmp_path / "operator-root.key"
    common = ["--data-dir", str(data), "--root", str(root)]
    assert main(["keys", "init", *common, "--topic-root", "fleet/v1"]) == 0
    assert root.stat().st_mode & 0o777 == 0o600
    first = keys_ring.read_ring(data)
    assert first is not None
    old = first.active()
    assert main(["keys", "add", *common, "--roles", "offers,acks"]) == 0
    new = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["keys", "activate", "--data-dir", str(data), new]) == 0
    material = load_or_create(data, "fleet/v1")
    assert material.signer.kid == new
    assert material.keys_version == 2
    trust = TrustFile.model_validate_json(material.trust_path.read_text())
    assert trust.root is not None
    assert trust.topic_root == "fleet/v1"
    assert main(["keys", "revoke", *common, str(old)]) == 0
    listed = json.loads((data / "keys" / "keylist.json").read_text())
    assert listed["version"] == 3
    assert listed["revoked"] == [old]
    assert [k["kid"] for k in listed["keys"]] == [new]
    assert listed["keys"][0]["roles"] == ["offers", "acks"]
    assert main(["keys", "rotate-root", *common, "--new-root", str(tmp_path / "r2.key")]) == 0
    assert main(["keys", "add", *common]) == 1  # the old root signs no more
    assert "not this fleet's current root" in capsys.readouterr().err
    entries = [
        json.loads(line) for line in (data / "keys" / "audit.jsonl").read_text().splitlines()
    ]
    assert [e["action"] for e in entries] == ["init", "add", "activate", "revoke", "rotate_root"]
    assert all(e["who"] and e["at"] for e in entries)
    assert not any("root" in p.name for p in (data / "keys").iterdir())
