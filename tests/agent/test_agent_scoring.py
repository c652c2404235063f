"""Model loading and input tensors against real onnxruntime sessions on real files."""

from __future__ import annotations

import math
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnx
import onnxruntime
import pytest

from agent.errors import ModelRejected
from agent.model.scoring import (
    Model,
    build_matrix,
    default_model_paths,
    load_default_model,
    load_model,
)
from protocol.envelopes import FeatureSpec
from tests.support.builders import (
    context,
    make_offer,
    manifest_for,
    onnx_bytes,
    spec_dict,
    write_model,
)

NAMES = ["offer.discount", "user.consumable_need", "offer.priority"]


def test_a_valid_model_scores_like_its_weights(tmp_path: Path) -> None:
    path, manifest = write_model(tmp_path, NAMES, [2.0, 3.0, -1.0], 0.5)
    model = load_model(path, manifest)
    assert (model.name, model.version, model.path) == ("tiny", 1, path)
    matrix = np.array([[0.5, 0.9, 0.3], [0.0, 0.0, 0.0]], dtype=np.float32)
    scores = model.score(matrix)
    expected = [1 / (1 + math.exp(-(1.0 + 2.7 - 0.3 + 0.5))), 1 / (1 + math.exp(-0.5))]
    assert scores.shape == (2,)
    assert scores.tolist() == pytest.approx(expected, rel=1e-6)


def test_the_session_is_shared_across_loads_of_the_same_file(tmp_path: Path) -> None:
    path, manifest = write_model(tmp_path, NAMES, [1.0, 1.0, 1.0])
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(path.read_bytes())
    first = load_model(path, manifest)
    second = load_model(copy, {**manifest, "version": 2})
    assert second.session is first.session
    other_path, other_manifest = write_model(tmp_path, NAMES, [1.0, 2.0, 1.0])
    assert load_model(other_path, other_manifest).session is not first.session


def test_a_spec_naming_an_unknown_feature_is_rejected(tmp_path: Path) -> None:
    path, manifest = write_model(tmp_path, [*NAMES[:2], "user.shoe_size"], [1.0, 1.0, 1.0])
    with pytest.raises(ModelRejected, match=r"unknown feature 'user\.shoe_size'") as info:
        load_model(path, manifest)
    assert info.value.version == 1


def test_a_truncated_file_is_rejected(tmp_path: Path) -> None:
    path, manifest = write_model(tmp_path, NAMES, [1.0, 1.0, 1.0])
    data = path.read_bytes()[:-20]
    path.write_bytes(data)
    with pytest.raises(ModelRejected, match="size mismatch"):
        load_model(path, manifest)
    # the same truncated bytes, even with a manifest that matches them, do not parse
    with pytest.raises(ModelRejected, match="corrupt model file"):
        load_model(path, manifest_for(data, manifest["feature_spec"]))


def test_a_sha_mismatch_is_rejected(tmp_path: Path) -> None:
    path, manifest = write_model(tmp_path, NAMES, [1.0, 1.0, 1.0])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelRejected, match="sha256 mismatch"):
        load_model(path, manifest)


def test_an_input_width_mismatch_is_rejected(tmp_path: Path) -> None:
    data = onnx_bytes([1.0, 1.0])  # takes 2 features
    path = tmp_path / "narrow.onnx"
    path.write_bytes(data)
    with pytest.raises(ModelRejected, match="input width mismatch: model takes 2 features, spec"):
        load_model(path, manifest_for(data, spec_dict(NAMES)))


def test_wrong_tensor_names_are_rejected(tmp_path: Path) -> None:
    data = onnx_bytes([1.0, 1.0, 1.0], input_name="x")
    path = tmp_path / "x.onnx"
    path.write_bytes(data)
    with pytest.raises(ModelRejected, match="input name 'x' does not match"):
        load_model(path, manifest_for(data, spec_dict(NAMES)))
    data = onnx_bytes([1.0, 1.0, 1.0], output_name="prob")
    path.write_bytes(data)
    with pytest.raises(ModelRejected, match="no output 'score'"):
        load_model(path, manifest_for(data, spec_dict(NAMES)))


def test_a_model_giving_non_finite_scores_is_rejected(tmp_path: Path) -> None:
    path, manifest = write_model(tmp_path, NAMES, [1.0, 1.0, 1.0], float("nan"))
    with pytest.raises(ModelRejected, match="non-finite test score"):
        load_model(path, manifest)


def test_an_invalid_manifest_or_missing_file_is_rejected(tmp_path: Path) -> None:
    path, manifest = write_model(tmp_path, NAMES, [1.0, 1.0, 1.0])
    with pytest.raises(ModelRejected, match="invalid manifest"):
        load_model(path, {**manifest, "sha256": "nothex"})
    with pytest.raises(ModelRejected, match="cannot read model file"):
        load_model(tmp_path / "absent.onnx", manifest)


def test_build_matrix_follows_the_spec_order_and_scaling() -> None:
    names = [
        "ctx.profile.tv",
        "offer.log_price",
        "user.category_count_24h",
        "offer.type.bundle",
        "offer.discount",
        "user.member_tier",
        "ctx.hour_sin",
        "user.consumable_need",
        "offer.limited",
        "user.category_count_7d",
        "ctx.profile.hub",
        "ctx.hour_cos",
    ]
    means = [0.5, 3.0, 1.0, 0.0, 0.2, 1.0, 0.0, 0.1, 0.0, 2.0, 0.0, 0.0]
    scales = [0.5, 2.0, 4.0, 1.0, 0.1, 2.0, 1.0, 0.3, 1.0, 8.0, 1.0, 1.0]
    spec = FeatureSpec.model_validate(spec_dict(names, means=means, scales=scales))
    offers = [
        make_offer("a", type="bundle", price=99.0, discount=0.3, category="purifier_filter"),
        make_offer("b", price=0.0, discount=0.0, limited=True, category="games"),
    ]
    ctx = context(
        local_hour=6.0,
        category_24h=MappingProxyType({"games": 5}),
        category_7d=MappingProxyType({"games": 9, "purifier_filter": 2}),
        consumable_need=MappingProxyType({"purifier_filter": 0.92}),
        member_tier=2,
    )
    raw = np.array(
        [
            [1, math.log1p(99.0), 0, 1, 0.3, 2, 1.0, 0.92, 0, 2, 0, 0.0],
            [1, 0.0, 5, 0, 0.0, 2, 1.0, 0.0, 1, 9, 0, 0.0],
        ]
    )
    expected = (raw - np.array(means)) / np.array(scales)
    matrix = build_matrix(spec, offers, ctx)
    assert matrix.dtype == np.float32
    assert matrix.shape == (2, len(names))
    np.testing.assert_allclose(matrix, expected, rtol=1e-5, atol=1e-6)


def test_build_matrix_uses_defaults_for_personal_features_without_personalization() -> None:
    names = ["user.consumable_need", "offer.priority", "user.member_tier"]
    spec = FeatureSpec.model_validate(
        spec_dict(names, means=[0.2, 0.5, 1.0], scales=[0.5, 0.25, 1.0], defaults=[0.2, 0.0, 1.0])
    )
    offers = [make_offer("a", priority=80, category="purifier_filter")]
    ctx = context(
        personalized=False,
        consumable_need=MappingProxyType({"purifier_filter": 0.9}),
        member_tier=3,
    )
    # defaults are raw values: (default - mean) / scale, here 0 for the personal columns
    np.testing.assert_allclose(build_matrix(spec, offers, ctx), [[0.0, 1.2, 0.0]], atol=1e-6)
    assert build_matrix(spec, [], ctx).shape == (0, 3)


def test_the_shipped_default_model_path_and_load() -> None:
    onnx_path, manifest_path = default_model_paths()
    assert onnx_path.parts[-3:] == ("models", "default", "model.onnx")
    assert manifest_path.name == "manifest.json"
    assert onnx_path.exists(), "the shipped model is committed in models/default"
    model = load_default_model()
    assert isinstance(model, Model)
    ctx = context()
    scores = model.score(build_matrix(model.spec, [make_offer("a"), make_offer("b")], ctx))
    assert np.all(np.isfinite(scores))


def test_the_tiny_models_are_valid_onnx() -> None:
    onnx.checker.check_model(onnx.load_from_string(onnx_bytes([1.0, 2.0])))


def test_the_session_runs_on_one_thread_without_spinning_fully_optimised() -> None:
    """Issue 4: one intra-op thread, spinning off, full graph optimisation, read back from the
    session the agent scores with (not from the code that builds it)."""
    options = load_default_model().session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
