"""``effattn quantize -o m.int8.onnx --cpu-ir``: the decision is a function of the measurements (tested exactly);
the IR is written beside, or nothing is, as it decides; what the kept IR records; ``load()`` runs it in the
.onnx's place only with backend auto and a matching sha256; refusals before any work; the CLI's table. The
measuring runs use the trained tiny segmenter at small shapes and a few milliseconds of timing. Skipped with a
reason without nncf (the ``nncf`` extra)."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from effattn import metadata, pipeline
from effattn.cli import main
from effattn.cpu import cpu_name
from effattn.errors import FileExistsNoForceError, InputError
from effattn.export.quantize import nncf_openvino
from effattn.files import sha256_file
from effattn.models.synthetic import shapes_batch
from effattn.runtime import TOLERANCES, choose_backend, compare, load
from effattn.runtime.openvino_runner import ir_beside, ir_metadata, openvino_version
from effattn.runtime.torch_runner import TorchRunner

needs_nncf = pytest.mark.skipif(
    not nncf_openvino.nncf_available(), reason="nncf is not installed (pip install 'effattn[cpu,nncf]')"
)
SAMPLES = 4  # calibration images: enough for the tiny segmenter, short for NNCF's statistics pass
SECONDS = 0.05  # timing per candidate: the tests check what follows from the numbers, never the numbers


@pytest.mark.parametrize(
    ("mode", "qdq_ms", "ir_ms", "ir_passed", "qdq_passed", "keep"),
    [
        ("auto", 5.41, 4.93, True, True, True),  # ea_resnet @ 224 on the Xeon: 1.10x
        ("auto", 3.14, 3.30, True, True, False),  # ea_segnet @ 256: the IR is slower
        ("auto", 1.029, 1.0, True, True, False),  # faster, but under the 3 % margin
        ("auto", 1.03, 1.0, True, True, True),  # at the margin
        ("auto", 5.41, 4.93, False, True, False),  # faster but outside the INT8 row
        ("auto", 3.14, 3.30, True, False, True),  # slower, but the only accurate artifact
        ("always", 3.14, 3.30, True, True, True),
        ("always", 3.14, 3.30, False, True, False),
    ],
)
def test_the_decision_is_a_function_of_the_measurements(mode, qdq_ms, ir_ms, ir_passed, qdq_passed, keep):
    kept, why = pipeline.keep_cpu_ir(mode, qdq_ms, ir_ms, ir_passed, qdq_passed)
    assert kept is keep
    assert why.startswith("kept" if keep else "not kept") and f"{qdq_ms / ir_ms:.2f}x" in why


def _keep(*args, **kwargs):
    """The decision forced to keep: what follows a kept IR (its files, record, load) without depending on the
    numbers; the decision itself is tested above, and on measured numbers below."""
    return True, "kept: told so"


@pytest.fixture(scope="module")
def kept(tmp_path_factory, onnx_models):
    """``--cpu-ir always`` on the trained segmenter (small shapes), the IR kept whatever was measured."""
    if not nncf_openvino.nncf_available():
        pytest.skip("nncf is not installed (pip install 'effattn[cpu,nncf]')")
    seg = onnx_models["seg_small"]
    out = tmp_path_factory.mktemp("cpu_ir") / "seg.int8.onnx"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "keep_cpu_ir", _keep)
        pick = pipeline.quantize_for_cpu(seg.path, out, "always", samples=SAMPLES, seconds=SECONDS)
    return seg, out, pick


@needs_nncf
def test_the_files_follow_the_decision_on_the_measured_numbers(onnx_models, tmp_path):
    """A real ``auto`` run: the IR is beside exactly when keep_cpu_ir says so of the medians and accuracy measured
    (on random draws and task images: calibrated on 4 images, even the QDQ graph may be outside the row on noise)."""
    out = tmp_path / "seg.int8.onnx"
    pick = pipeline.quantize_for_cpu(onnx_models["seg_small"].path, out, "auto", samples=SAMPLES, seconds=SECONDS)
    qdq, ir = pick.candidates
    keep, why = pipeline.keep_cpu_ir("auto", qdq.median_ms, ir.median_ms, ir.passed, qdq.passed)
    beside = (out.with_suffix(".xml").exists(), out.with_suffix(".bin").exists())
    assert (pick.decision, ir.kept, *beside) == (why, keep, keep, keep)
    assert qdq.kept and pick.inputs == "3 fresh random draws and 3 task images of ea_segnet_tiny at 1x3x48x48"
    assert {r.candidate for r in pick.report.rows} == {"QDQ graph", "NNCF IR"}


@needs_nncf
def test_a_kept_ir_records_what_it_stands_for(kept):
    _, out, pick = kept
    qdq, ir = pick.candidates
    assert (qdq.name, qdq.kept, ir.name, ir.kept) == ("QDQ graph", True, "NNCF IR", True)
    assert pick.kept == out.with_suffix(".xml") and out.with_suffix(".bin").is_file()
    import openvino as ov

    record = ir_metadata(ov.Core().read_model(str(pick.kept)))
    assert record[metadata.CPU_IR_ONNX_SHA256] == sha256_file(out)
    assert record[metadata.CPU_IR_BIN_SHA256] == sha256_file(out.with_suffix(".bin"))
    assert float(record[metadata.CPU_IR_QDQ_MS]) == pytest.approx(qdq.median_ms, abs=1e-4)
    assert float(record[metadata.CPU_IR_MS]) == pytest.approx(ir.median_ms, abs=1e-4)
    assert (record[metadata.CPU_IR_CPU], record[metadata.CPU_IR_OPENVINO]) == (cpu_name(), openvino_version())
    assert record[metadata.PRECISION] == "int8" and record[metadata.MODEL] == "ea_segnet_tiny"  # the export's, kept


@needs_nncf
def test_load_runs_the_kept_ir_within_the_int8_row_of_eager(kept, caplog):
    """``load(m.int8.onnx)`` on the CPU runs m.int8.xml and says so; on fresh task images (32 at 64 x 64, not the
    calibration's) the trained segmenter's IR is within the INT8 row of eager FP32 (on N(0, 1) noise it is not:
    rel L2 0.21-0.25, which ``--cpu-ir`` checks too; docs/precision.md)."""
    seg, out, pick = kept
    images, _ = shapes_batch(32, 64, 64, generator=torch.Generator().manual_seed(12345))
    with caplog.at_level("INFO", logger="effattn"), load(out, device="cpu") as runner:
        assert runner.path == pick.kept and runner.backend == "openvino-cpu-int8"
        report = compare(
            TorchRunner(seg.source.model, seg.profile, output_names=list(runner.outputs)),
            runner,
            [images[i : i + 2].numpy() for i in range(0, 32, 2)],
            "int8",
        )
    assert f"backend auto: OpenVINO on {pick.kept}" in caplog.text and "x the QDQ graph's speed" in caplog.text
    assert report.passed, report
    rows = {r.metric: r.value for r in report.rows}
    assert rows["output"] <= TOLERANCES["int8"].rel_l2 and rows["argmax"] >= 0.99


@needs_nncf
def test_an_explicit_backend_runs_the_file_itself(kept):
    _, out, _ = kept
    for backend in ("openvino", "onnxruntime"):
        with load(out, backend=backend) as runner:
            assert runner.path == out
    assert choose_backend(out, "openvino").path is None


@needs_nncf
def test_bench_on_the_file_times_the_kept_ir_in_the_nncf_row_of_its_recipe(kept, tmp_path):
    """``effattn bench m.int8.onnx``: its rows name their backends, so openvino-int8 times the QDQ graph and the NNCF
    row of the IR's recipe (performance, attention: openvino-nncf) times the IR beside, a default row there; the
    other NNCF rows, and every NNCF row of a file with no IR beside, are skipped saying why."""
    from effattn.bench.backends import FileBackends

    _, out, pick = kept
    made = FileBackends(out, "cpu", 1)
    assert "openvino-nncf" in made.defaults() and made.fits("openvino-nncf-mixed").startswith("skipped: ")
    with made.make("openvino-nncf") as ir, made.make("openvino-int8") as qdq:
        assert (ir.path, qdq.path) == (pick.kept, out)
    shutil.copy(out, tmp_path / "alone.int8.onnx")
    alone = FileBackends(tmp_path / "alone.int8.onnx", "cpu", 1)
    assert "openvino-nncf" not in alone.defaults() and "no such IR beside it" in alone.fits("openvino-nncf")


@needs_nncf
def test_a_stale_or_unreadable_ir_beside_is_not_run(kept, tmp_path, caplog):
    """The same IR beside another QDQ file (one metadata entry more: another sha256) is stale; a broken one is
    unreadable; either way load() runs the .onnx itself and the log line names why."""
    _, out, pick = kept
    assert ir_beside(tmp_path / "nothing.int8.onnx") is None  # nothing beside: nothing read, nothing hashed
    other = onnx.load(str(out))
    other.metadata_props.add(key="note", value="another file")
    onnx.save(other, str(tmp_path / "seg.int8.onnx"))
    for suffix in (".xml", ".bin"):
        shutil.copy(pick.kept.with_suffix(suffix), tmp_path / f"seg.int8{suffix}")
    stale = ir_beside(tmp_path / "seg.int8.onnx")
    assert stale is not None and stale.problem is not None and stale.problem.startswith("stale")
    with caplog.at_level("INFO", logger="effattn"), load(tmp_path / "seg.int8.onnx") as runner:
        assert runner.path == tmp_path / "seg.int8.onnx"
    assert "seg.int8.xml beside it not run: stale" in caplog.text
    (tmp_path / "seg.int8.xml").write_text("<net>not an IR")
    caplog.clear()
    with caplog.at_level("INFO", logger="effattn"), load(tmp_path / "seg.int8.onnx") as runner:
        assert runner.path == tmp_path / "seg.int8.onnx"
    assert "seg.int8.xml beside it not run: unreadable: Unable to read the model" in caplog.text


@needs_nncf
def test_an_ir_beside_with_other_weights_is_not_run(kept, tmp_path, caplog):
    """The .xml names its .bin by file name alone: the kept IR's .xml beside its own .onnx but with another .bin of
    the same size (here its own, one weight byte changed; another calibration's reads as well) would run other
    weights with success. Its recorded sha256 of the .bin refuses it; load() runs the .onnx itself."""
    _, out, _ = kept
    for suffix in (".onnx", ".xml", ".bin"):
        shutil.copy(out.with_suffix(suffix), tmp_path / f"seg.int8{suffix}")
    assert ir_beside(tmp_path / "seg.int8.onnx").problem is None
    weights = bytearray((tmp_path / "seg.int8.bin").read_bytes())
    weights[len(weights) // 2] ^= 0x01
    (tmp_path / "seg.int8.bin").write_bytes(weights)
    swapped = ir_beside(tmp_path / "seg.int8.onnx")
    assert swapped is not None and swapped.problem == "its weights seg.int8.bin are not the ones it was kept with"
    with caplog.at_level("INFO", logger="effattn"), load(tmp_path / "seg.int8.onnx") as runner:
        assert runner.path == tmp_path / "seg.int8.onnx"
    assert "seg.int8.xml beside it not run: its weights seg.int8.bin are not" in caplog.text


@needs_nncf
def test_not_kept_writes_nothing_beside_and_leaves_an_old_ir_as_it_was(onnx_models, tmp_path, monkeypatch):
    """The decision says no (forced here: the measured path is the kept fixture's): only the .onnx is written. With
    --force over an IR from before, that IR is left byte for byte and named stale, never deleted."""
    seg = onnx_models["seg_small"].path
    monkeypatch.setattr(pipeline, "keep_cpu_ir", lambda *a, **k: (False, "not kept: told so"))
    pick = pipeline.quantize_for_cpu(seg, tmp_path / "a.int8.onnx", "auto", samples=SAMPLES, seconds=SECONDS)
    assert pick.kept is None and [c.kept for c in pick.candidates] == [True, False] and pick.beside is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.int8.onnx"]
    (tmp_path / "a.int8.xml").write_text("<net>an old IR</net>")
    (tmp_path / "a.int8.bin").write_bytes(b"old weights")
    pick = pipeline.quantize_for_cpu(
        seg, tmp_path / "a.int8.onnx", "auto", samples=SAMPLES, seconds=SECONDS, force=True
    )
    assert (tmp_path / "a.int8.xml").read_text() == "<net>an old IR</net>"
    assert (tmp_path / "a.int8.bin").read_bytes() == b"old weights"
    assert pick.beside is not None and "left as it was" in pick.beside and "unreadable" in pick.beside


@needs_nncf
def test_an_ir_beside_is_refused_without_force_before_any_work(onnx_models, tmp_path):
    seg = onnx_models["seg_small"].path
    for suffix in (".xml", ".bin"):
        (tmp_path / f"b.int8{suffix}").write_bytes(b"not ours")
        with pytest.raises(FileExistsNoForceError, match=rf"b\.int8\{suffix} exists; pass --force"):
            pipeline.quantize_for_cpu(seg, tmp_path / "b.int8.onnx", "auto", samples=SAMPLES)
        assert not (tmp_path / "b.int8.onnx").exists() and (tmp_path / f"b.int8{suffix}").read_bytes() == b"not ours"
        (tmp_path / f"b.int8{suffix}").unlink()


def test_refusals_in_one_line(onnx_models, tmp_path, monkeypatch, capsys):
    """Wrong mode, output or precision, and a missing NNCF: refused before anything is written."""
    seg = onnx_models["seg_small"].path
    with pytest.raises(InputError, match="cpu_ir must be one of off, auto, always"):
        pipeline.quantize_for_cpu(seg, tmp_path / "c.int8.onnx", "sometimes")
    with pytest.raises(InputError, match="--cpu-ir weighs NNCF's IR against the INT8 QDQ graph"):
        pipeline.quantize_for_cpu(seg, tmp_path / "c.fp8.onnx", "auto", precision="fp8")
    assert main(["quantize", str(seg), "-o", str(tmp_path / "c.xml"), "--cpu-ir", "auto"]) == 2
    assert "--cpu-ir writes NNCF's IR beside a QDQ graph" in capsys.readouterr().err
    monkeypatch.setattr(nncf_openvino, "nncf_available", lambda: False)
    with pytest.raises(Exception, match=r"needs NNCF and OpenVINO: pip install 'effattn\[cpu,nncf\]'"):
        pipeline.quantize_for_cpu(seg, tmp_path / "c.int8.onnx", "auto")
    assert list(tmp_path.iterdir()) == []


def test_the_fp32_input_is_not_overwritten_even_with_force(onnx_models, tmp_path, capsys):
    """-o over the input with --force: --cpu-ir needs the FP32 file after the QDQ graph is written (NNCF's input, the
    accuracy reference), so it is refused before any work, the input left as it was (it was replaced, then NNCF
    refused its INT8 input: the FP32 file lost, and the command failed)."""
    fp32 = tmp_path / "seg.onnx"
    shutil.copy(onnx_models["seg_small"].path, fp32)
    before = fp32.read_bytes()
    argv = ["quantize", str(fp32), "-o", str(fp32), "--cpu-ir", "auto", "--force", "--samples", str(SAMPLES)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "write seg.onnx to another file than its input" in err
    assert fp32.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["seg.onnx"]


@needs_nncf
def test_a_file_without_a_profile_is_refused_before_any_work(onnx_models, tmp_path):
    """The accuracy check draws at the profile's opt shape: a file that records none is refused before the QDQ graph
    and NNCF's IR are made (it was refused after both, the QDQ graph left written by a failed command)."""
    model = onnx.load(str(onnx_models["seg_small"].path))
    kept = [p for p in model.metadata_props if p.key != metadata.PROFILE]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(tmp_path / "bare.onnx"))
    feeds = {"input": np.random.default_rng().standard_normal((2, 3, 32, 32)).astype(np.float32)}
    np.savez(tmp_path / "cal.npz", **feeds)
    with pytest.raises(InputError, match=r"bare\.onnx records no shape profile: --cpu-ir draws its inputs at"):
        pipeline.quantize_for_cpu(tmp_path / "bare.onnx", tmp_path / "bare.int8.onnx", calibration=tmp_path / "cal.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.onnx", "cal.npz"]


@needs_nncf
def test_cli_prints_the_table_and_run_says_which_file_it_ran(onnx_models, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "CPU_IR_SECONDS", SECONDS)
    monkeypatch.setattr(pipeline, "keep_cpu_ir", _keep)
    seg, out = onnx_models["seg_small"].path, tmp_path / "seg.int8.onnx"
    args = ["quantize", str(seg), "-o", str(out), "--samples", str(SAMPLES), "--cpu-ir", "always"]
    assert main(args) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("candidate"))
    assert lines[header].split() == ["candidate", "file", "median", "ms", "rel", "L2", "argmax", "accuracy", "kept"]
    assert lines[header + 1].startswith(f"QDQ graph  {out}") and lines[header + 1].endswith("yes")
    assert lines[header + 2].startswith(f"NNCF IR    {out.with_suffix('.xml')}") and lines[header + 2].endswith("yes")
    assert lines[header + 3] == "kept: told so" and lines[header - 1].startswith("CPU INT8 on OpenVINO, ")
    assert main(["run", str(out)]) == 0
    assert f"backend: openvino-cpu-int8 on {out.with_suffix('.xml')}, in {out}'s place" in capsys.readouterr().out
    main(["compare", str(out)])  # passes or not (noise: see above); it says which file it checked
    assert f"on openvino-cpu-int8 on {out.with_suffix('.xml')}, in {out}'s place" in capsys.readouterr().out
    main(["compare", str(out), "--json"])  # and so does its JSON, as run's
    assert json.loads(capsys.readouterr().out)["file"] == str(out.with_suffix(".xml"))
    assert main([*args, "--force", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["cpu_ir"]
    assert report["mode"] == "always" and report["kept"] == str(out.with_suffix(".xml"))
    assert [c["name"] for c in report["candidates"]] == ["QDQ graph", "NNCF IR"]
    assert all(np.isfinite(c["median_ms"]) for c in report["candidates"])
    assert main(["quantize", str(seg), "-o", str(tmp_path / "off.int8.onnx"), "--samples", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cpu_ir"]["candidates"] == []


def test_quantize_off_reports_a_stale_ir_beside(onnx_models, tmp_path, capsys):
    """The default (--cpu-ir off) writes the QDQ graph as before and names an IR beside that no longer stands for it."""
    (tmp_path / "d.int8.xml").write_text("<net>old</net>")
    seg = onnx_models["seg_small"].path
    assert main(["quantize", str(seg), "-o", str(tmp_path / "d.int8.onnx"), "--samples", "2"]) == 0
    assert f"note: {tmp_path / 'd.int8.xml'} beside it is left as it was" in capsys.readouterr().out
    assert (tmp_path / "d.int8.xml").read_text() == "<net>old</net>"


def test_argmax_counts_only_for_trained_weights():
    """Rel L2 within the row, argmax agreement 92 % (what INT8 noise gives random-weight ea_resnet's near-tied
    logits): a failure with trained weights, shown but not required without them; rel L2 out of the row fails
    either way."""
    from effattn.bench.timing import LatencyStats
    from effattn.runtime.parity import Report, Row

    tol = TOLERANCES["int8"]
    stats = LatencyStats.from_samples([2e-3, 2e-3, 2e-3])
    for rel_l2, argmax, trained, passed in [
        (0.01, 0.92, True, False),
        (0.01, 0.92, False, True),
        (0.01, 1.0, True, True),
        (0.5, 1.0, False, False),
    ]:
        report = Report(
            [
                Row("QDQ graph", "logits", "output", rel_l2, tol.rel_l2),
                Row("QDQ graph", "logits", "argmax", argmax, tol.argmax_agreement),
            ],
            "int8",
        )
        made = pipeline._candidate("QDQ graph", "q.onnx", report, stats, argmax_counts=trained)
        assert (made.passed, made.argmax, made.rel_l2) == (passed, argmax, rel_l2)


@needs_nncf
def test_a_random_weight_file_is_weighed_on_rel_l2(tmp_path):
    """No checkpoint recorded: --cpu-ir says argmax is shown, not required, and each candidate's verdict is its
    rel L2 rows'."""
    from effattn.export import export_onnx
    from effattn.models import load_model

    fp32 = export_onnx(load_model("ea_resnet_tiny"), None, tmp_path / "r.onnx").path
    pick = pipeline.quantize_for_cpu(fp32, tmp_path / "r.int8.onnx", "auto", samples=SAMPLES, seconds=SECONDS)
    assert "argmax shown, not required: no trained weights recorded" in pick.inputs
    for c in pick.candidates:
        rows = [r for r in pick.report.rows if r.candidate == c.name]
        assert any(r.metric == "argmax" for r in rows)
        assert c.passed == all(r.passed for r in rows if r.metric != "argmax")


@needs_nncf
def test_compare_takes_the_ir_itself(kept, tmp_path, capsys):
    """``effattn compare m.int8.xml`` checks the IR against eager (its metadata from its rt_info), takes saved inputs
    by the IR's input names, and refuses ``--bisect`` (ONNX tensors) in one line."""
    seg, _, pick = kept
    xml = str(pick.kept)
    feed = tmp_path / "x.npz"
    np.savez(feed, input=np.random.default_rng().standard_normal((1, 3, 48, 48)).astype(np.float32))
    code = main(["compare", xml, "--load-inputs", str(feed), "--tolerance", "int8"])
    printed = capsys.readouterr()
    assert f"{xml} vs eager PyTorch (ea_segnet_tiny) on openvino-cpu-int8, 1 inputs from 1 file(s)" in printed.out
    assert code in (0, 1) and ("PASS" in printed.out or "FAIL" in printed.out)
    assert main(["compare", xml, "--bisect", str(seg.path)]) == 2
    err = capsys.readouterr().err
    assert "--bisect compares ONNX graphs tensor by tensor" in err and err.count("\n") == 1
