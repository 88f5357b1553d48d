import argparse

import pytest
import torch
from safetensors.torch import save_file

from effattn.errors import CheckpointError, ModelError
from effattn.models import create_model, load_model, load_weights, read_state_dict, sha256_file, weights_sha256
from effattn.models.synthetic import CLASSES, shapes_batch


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "wrapped", "ddp"])
def test_checkpoint_formats_load(tmp_path, fmt):
    src = create_model("ea_resnet_tiny")
    state = _state(src)
    path = tmp_path / f"ckpt.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    if fmt == "safetensors":
        save_file(state, str(path))
    elif fmt == "pt":
        torch.save(state, path)
    elif fmt == "wrapped":
        torch.save({"state_dict": state, "epoch": 3}, path)
    else:
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    dst = load_weights(create_model("ea_resnet_tiny"), path)
    for k, v in dst.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_mismatched_keys_are_named(tmp_path):
    state = _state(create_model("ea_resnet_tiny"))
    state.pop("head.weight")
    state["extra.weight"] = torch.zeros(1)
    state["head.bias"] = torch.zeros(7)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_weights(create_model("ea_resnet_tiny"), path)
    msg = str(err.value)
    assert "missing keys: head.weight" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "head.bias (7,) vs model (10,)" in msg


def test_corrupt_and_unsafe_checkpoints_are_refused(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_state_dict(junk)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"weights": torch.zeros(1), "obj": argparse.Namespace(a=1)}, unsafe)  # needs full pickle
    with pytest.raises(
        CheckpointError, match=r"pickled Python objects \(argparse.Namespace\).*model.state_dict\(\)"
    ) as e:
        read_state_dict(unsafe)
    assert "\x1b" not in str(e.value) and str(e.value).endswith("load those")  # no ANSI codes, not cut
    with pytest.raises(CheckpointError, match=r"not a torch or safetensors checkpoint \(Unsupported operand"):
        read_state_dict(junk)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "missing.safetensors")
    not_tensors = tmp_path / "meta.pt"
    torch.save({"epoch": 3}, not_tensors)
    with pytest.raises(CheckpointError, match="holds no state_dict"):
        read_state_dict(not_tensors)


def test_user_factory_with_checkpoint(tmp_path):
    from tests.conftest import make_user_model

    state = _state(make_user_model(channels=8))
    path = tmp_path / "user.safetensors"
    save_file(state, str(path))
    source = load_model("tests.conftest:make_user_model", checkpoint=path, channels=8)
    assert source.checkpoint_sha256 == weights_sha256(state) != sha256_file(path)
    assert torch.equal(source.model.state_dict()["0.weight"], state["0.weight"])


def test_the_weights_hash_is_the_tensors_not_the_file(tmp_path):
    state = _state(create_model("ea_resnet_tiny"))
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": state, "epoch": 7}, tmp_path / "w.pt")  # a training wrapper around the same tensors
    hashes = {weights_sha256(read_state_dict(tmp_path / name)) for name in ("w.safetensors", "w.pt")}
    assert hashes == {weights_sha256(state)}
    changed = dict(state)
    name = next(iter(changed))
    changed[name] = changed[name].clone()
    changed[name].view(-1)[0] += 1  # one element differs: another hash
    assert weights_sha256(changed) != weights_sha256(state)
    scalar = {"step": torch.tensor(3)}  # 0-dim tensors (BatchNorm's num_batches_tracked) hash too
    assert weights_sha256(scalar) != weights_sha256({"step": torch.tensor(4)})


@pytest.mark.parametrize(
    "spec,match",
    [
        ("tests.conftest:nope", "has no attribute 'nope'"),
        ("no_such_pkg.mod:f", "cannot import module 'no_such_pkg.mod'"),
        ("tests.conftest:not_a_model", "returned int, not a torch.nn.Module"),
        ("tests.conftest", r"unknown model 'tests.conftest'\. Known models: .*package.module:factory"),
    ],
)
def test_bad_user_factories(spec, match):
    with pytest.raises(ModelError, match=match):
        load_model(spec)


def test_shipped_weights_are_trained():
    """Random weights score ~1/3 per class; the shipped ones segment held-out synthetic images."""
    source = load_model("ea_segnet_tiny", pretrained=True)
    assert source.checkpoint is not None and source.checkpoint.stat().st_size < 5 * 2**20
    x, y = shapes_batch(16, 64, 64, torch.Generator().manual_seed(99))
    with torch.no_grad():
        pred = source.model(x).argmax(1)
    accuracy = (pred == y).float().mean().item()
    assert accuracy > 0.95, f"pixel accuracy {accuracy:.3f}"
    for c in range(1, len(CLASSES)):
        iou = ((pred == c) & (y == c)).sum() / ((pred == c) | (y == c)).sum()
        assert iou > 0.75, f"{CLASSES[c]} IoU {iou:.3f}"


def _safetensors(header: dict, data: bytes = b"\0" * 8) -> bytes:
    import json
    import struct

    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + data


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x05",
        b"\xff" * 8 + b"{}",  # empty, truncated, a 2^64-byte header
        _safetensors({"w": {"dtype": "XX", "shape": [2], "data_offsets": [0, 8]}}),  # foreign dtype
        _safetensors({"w": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}),  # 2^80 elements
        _safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}}),  # data past the end
    ],
    ids=["empty", "truncated", "huge-header", "foreign-dtype", "huge-shape", "past-the-end"],
)
def test_corrupt_or_foreign_safetensors_is_one_checkpoint_error(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"^cannot read checkpoint .*bad\.safetensors: ") as e:
        read_state_dict(path)
    assert "\n" not in str(e.value)


def test_integer_weights_are_refused_not_cast(tmp_path):
    model = create_model("efficient_attention", in_channels=8, key_channels=4, head_count=2, value_channels=8)
    state = {k: v.to(torch.int64) if k == "keys.weight" else v for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "int.safetensors")
    before = model.keys.weight.detach().clone()
    with pytest.raises(
        CheckpointError,
        match=r"dtype mismatches \(refused, not cast\): keys.weight torch.int64 "
        r"vs model torch.float32",
    ):
        load_weights(model, tmp_path / "int.safetensors")
    assert torch.equal(model.keys.weight, before)
    half = {k: v.half() for k, v in model.state_dict().items()}  # a change of precision within a kind is fine
    save_file(half, tmp_path / "half.safetensors")
    load_weights(model, tmp_path / "half.safetensors")
