"""The precisions table: one row per precision, and every stage and the CLI read it rather than a copy."""

import argparse
import subprocess
import sys

import pytest

from effattn import precisions
from effattn.errors import InputError


def test_the_table_is_the_one_list_of_precisions():
    assert precisions.names() == ("fp32", "fp16", "bf16", "int8", "fp8")
    assert precisions.quantized() == ("int8", "fp8")
    assert precisions.converted() == ("fp16", "bf16")
    assert [precisions.get(n).zero_point_type for n in precisions.names()] == [
        None,
        None,
        None,
        "int8",
        "float8_e4m3fn",
    ]
    assert precisions.by_zero_point_type("float8_e4m3fn").name == "fp8"
    assert precisions.by_zero_point_type("float8_e5m2") is None  # TensorRT takes E4M3 only
    assert precisions.get("fp8").min_capability == (8, 9) and precisions.get("int8").min_capability is None
    assert precisions.DEFAULT_QUANTIZED in precisions.quantized()


def test_an_unknown_precision_names_the_known_ones_and_the_nearest():
    with pytest.raises(
        InputError,
        match=r"unknown precision 'fp61' \(did you mean 'fp16'\?\); effattn knows fp32, "
        r"fp16, bf16, int8, fp8",
    ):
        precisions.get("fp61")
    with pytest.raises(InputError, match=r"unknown precision 'auto'; effattn knows"):
        precisions.get("auto")


def test_every_reader_takes_the_table():
    from effattn.bench.roofline import WEIGHT_BYTES
    from effattn.runtime import TOLERANCES

    assert {p.name: p.tolerance for p in precisions.TABLE} == TOLERANCES
    assert {p.name: p.weight_bytes for p in precisions.TABLE} == WEIGHT_BYTES


def test_each_made_precision_has_its_conversion():
    """A row made by "convert" has a converter, one made by "quantize" a quantize recipe: nothing more to add."""
    from effattn.export.precision import CONVERTERS
    from effattn.export.quantize import RECIPES

    assert tuple(CONVERTERS) == precisions.converted()
    assert tuple(RECIPES) == precisions.quantized()


def _choices(command: str, option: str) -> tuple:
    from effattn.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return tuple(next(a for a in sub.choices[command]._actions if option in a.option_strings).choices)


def test_the_cli_choices_are_the_table():
    assert _choices("build", "--precision") == ("auto", *precisions.names())
    assert _choices("quantize", "--precision") == precisions.quantized()


def test_bench_backends_run_a_precision_where_its_row_says_it_runs():
    """Each bench backend is (runtime, precision, device) records: a precision the table knows, on a runtime and
    device its row lists; --help names every one of them."""
    from effattn.bench import catalog
    from effattn.cli import build_parser

    for b in catalog.BACKENDS.values():
        row = precisions.get(b.precision)
        assert all((b.runtime, d) in row.runs_on for d in b.devices), b.name
        assert set(b.default_on) <= set(b.devices), b.name
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    described = " ".join(sub.choices["bench"].description.split())
    assert all(f"{name} (" in described for name in catalog.BACKENDS)


def test_the_cli_parsers_import_nothing_heavy():
    """``effattn --help`` answers at once: the parsers (with their choices from the table) load no torch or onnx."""
    code = (
        "import sys, effattn.cli; effattn.cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'onnx', 'numpy', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
