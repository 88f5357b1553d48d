"""Engine cache keying and invalidation: the backend-independent half, tested without a GPU."""

import json
import logging

import pytest

from effattn.engines.cache import EngineCache, EngineKey, Sidecar, sidecar_path, verify_plan
from effattn.errors import BackendError

HERE = dict(backend="tensorrt", backend_version="10.13.0", gpu_name="NVIDIA H100", compute_capability="9.0")


def key(**change):
    fields = (
        dict(
            onnx_bytes=b"graph",
            precision="fp16",
            profiles=['{"input":1}'],
            builder_options={"optimization_level": 3, "workspace_gib": None},
        )
        | HERE
    )
    fields.update(change)
    return EngineKey.create(**fields)


@pytest.mark.parametrize(
    "change",
    [
        dict(onnx_bytes=b"graph2"),
        dict(precision="fp32"),
        dict(profiles=['{"input":2}']),
        dict(builder_options={"optimization_level": 5, "workspace_gib": None}),
        dict(backend_version="11.0.0"),
        dict(gpu_name="NVIDIA A100"),
        dict(compute_capability="8.0"),
        dict(backend="tensorrt_rtx"),
    ],
)
def test_every_ingredient_changes_the_key(change):
    assert key(**change).digest != key().digest


def test_key_ignores_option_order():
    a = key(builder_options={"a": 1, "b": 2})
    b = key(builder_options={"b": 2, "a": 1})
    assert a.digest == b.digest


def test_store_then_hit(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    k = key()
    assert cache.lookup(k) is None
    plan = cache.store(k, b"PLAN" * 100, io=[{"name": "input"}], layers={"layers": 3, "fp16": 3})
    with caplog.at_level(logging.INFO, logger="effattn"):
        assert cache.lookup(k) == plan
    assert "engine cache hit" in caplog.text
    side = json.loads(sidecar_path(plan).read_text())
    assert side["key"]["backend_version"] == "10.13.0" and side["plan_bytes"] == 400
    assert cache.lookup(key(precision="fp32")) is None  # a different key, another file


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:10]), "truncated"),
        (lambda p: p.write_bytes(b"X" * 400), "corrupt"),
        (lambda p: sidecar_path(p).unlink(), "sidecar written when it was built"),
        (lambda p: sidecar_path(p).write_text("{not json"), "not an effattn engine sidecar"),
    ],
)
def test_damaged_entries_are_rebuilt_not_loaded(tmp_path, caplog, damage, match):
    cache = EngineCache(tmp_path)
    plan = cache.store(key(), b"PLAN" * 100)
    damage(plan)
    with caplog.at_level(logging.WARNING, logger="effattn"):
        assert cache.lookup(key()) is None
    assert match in caplog.text


def test_foreign_engines_are_refused_with_the_reason(tmp_path):
    plan = EngineCache(tmp_path).store(key(), b"PLAN")
    verify_plan(plan, **HERE)
    with pytest.raises(BackendError, match=r"built for another setup: backend_version '10.13.0' \(here '11.0.0'\)"):
        verify_plan(plan, **(HERE | {"backend_version": "11.0.0"}))
    with pytest.raises(BackendError, match=r"gpu_name 'NVIDIA H100' \(here 'NVIDIA L4'\), compute_capability '9.0'"):
        verify_plan(plan, **(HERE | {"gpu_name": "NVIDIA L4", "compute_capability": "8.9"}))
    with pytest.raises(BackendError, match="does not exist"):
        verify_plan(tmp_path / "none.plan", **HERE)


def test_sidecar_key_mismatch_is_logged(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    plan = cache.store(key(), b"PLAN")
    side = Sidecar.read(sidecar_path(plan))
    side.key["precision"] = "fp32"  # a plan stored under this name from something else
    side.write(sidecar_path(plan))
    with caplog.at_level(logging.WARNING, logger="effattn"):
        assert cache.lookup(key()) is None
    assert "precision: engine has 'fp32', wanted 'fp16'" in caplog.text


@pytest.mark.parametrize(
    "change",
    [
        dict(backend="tensorrt_rtx"),
        dict(backend_version="11.0.0"),
        dict(backend_version="10.13.1"),
        dict(compute_capability="8.9"),
        dict(gpu_name="NVIDIA H100 PCIe"),
    ],
)
def test_each_flavour_version_and_gpu_has_its_own_timing_cache(tmp_path, change):
    cache = EngineCache(tmp_path)
    assert cache.timing_cache(key(**change)) != cache.timing_cache(key())


def test_timing_cache_is_shared_only_by_builds_for_the_same_tensorrt_and_gpu(tmp_path):
    """Other models, precisions and options on the same TensorRT and GPU reuse its timings."""
    cache = EngineCache(tmp_path)
    other = key(onnx_bytes=b"other", precision="int8", builder_options={"optimization_level": 5})
    assert cache.timing_cache(other) == cache.timing_cache(key())
    assert cache.timing_cache(key()) == tmp_path / "timing.tensorrt-10.13.0.sm90.NVIDIA_H100.cache"


def test_timing_cache_name_stays_in_its_folder(tmp_path):
    cache = EngineCache(tmp_path)
    path = cache.timing_cache(key(gpu_name="../../etc/passwd", backend_version="10/../x"))
    assert path.parent == tmp_path and "/" not in path.name and ".." not in path.name


@pytest.mark.parametrize(
    "change, said",
    [
        (dict(gpu_name=""), "gpu_name is empty"),
        (dict(backend_version=" "), "backend_version is empty"),
        (dict(compute_capability="sm90"), "compute capability 'sm90' is not of the form"),
    ],
)
def test_timing_cache_refuses_an_unknown_setup(tmp_path, change, said):
    with pytest.raises(BackendError, match=said):
        EngineCache(tmp_path).timing_cache(key(**change))


def test_sidecar_records_the_timing_cache(tmp_path):
    cache = EngineCache(tmp_path)
    k = key()
    plan = cache.store(k, b"PLAN", timing_cache=cache.timing_cache(k))
    assert Sidecar.read(sidecar_path(plan)).timing_cache == "timing.tensorrt-10.13.0.sm90.NVIDIA_H100.cache"
    assert Sidecar.read(sidecar_path(cache.store(key(precision="int8"), b"PLAN"))).timing_cache == ""
