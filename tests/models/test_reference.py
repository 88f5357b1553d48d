"""Rebuilding the reference from a file's metadata: the file is data and never chooses code to run."""

import json
import sys

import pytest
import torch
from safetensors.torch import save_file

from effattn import metadata
from effattn.errors import MetadataError, ModelError, TrustError
from effattn.models import create_model, read_state_dict, reference_from_metadata, sha256_file, weights_sha256


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(1)}, path)
    return path


def _meta(model: str, checkpoint, **args) -> dict:
    return {
        metadata.MODEL: model,
        metadata.MODEL_ARGS: json.dumps(args),
        metadata.CHECKPOINT_SHA256: sha256_file(checkpoint),
    }


def test_a_factory_named_by_the_file_is_never_imported_or_called(tmp_path, checkpoint, monkeypatch):
    marker = tmp_path / "ran"
    (tmp_path / "evil_module.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef build(**kw): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for meta in (_meta("os:system", checkpoint, command=f"touch {marker}"), _meta("evil_module:build", checkpoint)):
        with pytest.raises(TrustError, match="effattn runs no code a file names"):
            reference_from_metadata(meta, checkpoint)
    assert not marker.exists() and "evil_module" not in sys.modules


def test_a_named_or_trusted_factory_runs(tmp_path):
    from tests.conftest import make_user_model

    path = tmp_path / "user.safetensors"
    save_file(make_user_model(channels=4).state_dict(), path)
    meta = _meta("tests.conftest:make_user_model", path, channels=4)
    with pytest.raises(TrustError):
        reference_from_metadata(meta, path, allow=["tests.conftest:other"])
    for kwargs in ({"allow": ["tests.conftest:make_user_model"]}, {"trust_metadata": True}):
        source = reference_from_metadata(meta, path, **kwargs)
        assert source.name == "tests.conftest:make_user_model" and source.model[0].out_channels == 4


@pytest.mark.parametrize(
    "args,error,match",
    [
        ({"in_channels": 2**40}, ModelError, "would have .* parameters"),  # 10^24 parameters: measured, never allocated
        ({"num_classes": -3}, ModelError, "failed while building with arguments"),
        ({"no_such_argument": 1}, ModelError, "does not take the arguments"),
    ],
)
def test_zoo_arguments_from_a_file_are_checked_before_anything_is_allocated(checkpoint, args, error, match):
    with pytest.raises(error, match=match):
        reference_from_metadata(_meta("ea_segnet_tiny", checkpoint, **args), checkpoint)


def test_bad_model_args_json_is_one_line(checkpoint):
    meta = _meta("ea_segnet_tiny", checkpoint) | {metadata.MODEL_ARGS: "{not json"}
    with pytest.raises(MetadataError, match="not valid JSON"):
        reference_from_metadata(meta, checkpoint)


def test_zoo_model_with_matching_checkpoint_rebuilds(tmp_path):
    model = create_model("ea_resnet_tiny", num_classes=4)
    path = tmp_path / "r.safetensors"
    save_file(model.state_dict(), path)
    source = reference_from_metadata(_meta("ea_resnet_tiny", path, num_classes=4), path)  # a file hash: older files
    assert source.checkpoint_sha256 == weights_sha256(read_state_dict(path))
    meta = _meta("ea_resnet_tiny", path, num_classes=4) | {metadata.CHECKPOINT_SHA256: source.checkpoint_sha256}
    pt = tmp_path / "r.pt"  # the same weights in the other format are the same checkpoint
    torch.save(model.state_dict(), pt)
    assert reference_from_metadata(meta, pt).checkpoint_sha256 == source.checkpoint_sha256
    other = create_model("ea_resnet_tiny", num_classes=4)
    torch.save(other.state_dict(), pt)  # other weights (fresh random init) are refused
    with pytest.raises(ModelError, match="is not the one the file was exported from"):
        reference_from_metadata(meta, pt)
