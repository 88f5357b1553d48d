"""Reading effattn metadata from files that may have been tampered with: one-line errors, nothing huge."""

import json

import pytest

from effattn import metadata
from effattn.errors import MetadataError, ProfileError

GOOD = {"input": {"min": [1, 3, 8, 8], "opt": [1, 3, 16, 16], "max": [2, 3, 32, 32]}}


@pytest.mark.parametrize(
    "text,match",
    [
        ("{", "not valid JSON"),
        ("[" * 30_000 + "]" * 30_000, "not valid JSON"),  # nesting deeper than the parser's recursion limit
        ("[1, 2]", "malformed shape profile"),
        (json.dumps({"input": 5}), "malformed shape profile"),
        (json.dumps({"input": {"min": [1], "opt": [1]}}), "malformed shape profile"),
        (json.dumps({"input": {"min": [True], "opt": [1], "max": [1]}}), "must be a list of integers"),
        (json.dumps({"input": {"min": [1] * 9, "opt": [1] * 9, "max": [1] * 9}}), "rank 9"),
        (json.dumps({"input": {"min": [1, 1], "opt": [1, 1], "max": [2**40, 2**40]}}), "over 268435456 elements"),
        (json.dumps({"input": dict(GOOD["input"], dtype="object")}), "has dtype 'object'"),
        (json.dumps({f"input{i}": GOOD["input"] for i in range(3000)}), "characters long"),
    ],
)
def test_tampered_profiles_are_one_line(text, match):
    with pytest.raises((ProfileError, MetadataError), match=match) as e:
        metadata.profile_of({metadata.PROFILE: text})
    assert "\n" not in str(e.value) and len(str(e.value)) < 500


def test_good_profile_reads():
    assert metadata.profile_of({metadata.PROFILE: json.dumps(GOOD)})["input"].max == (2, 3, 32, 32)


@pytest.mark.parametrize("value", ["int3", "fp32 ", "FP16", ""])
def test_unknown_precision_is_refused(value):
    if value == "":
        assert metadata.precision_of({metadata.PRECISION: value}) == "fp32"  # unrecorded: the export default
        return
    with pytest.raises(MetadataError, match=r"effattn\.precision is"):
        metadata.precision_of({metadata.PRECISION: value})


def test_residuals_must_name_the_models_own_tensors():
    meta = {metadata.RESIDUAL: "output=input"}
    assert metadata.residuals_of(meta, ["input"], ["output"]) == {"output": "input"}
    for bad in ("output=nope", "nope=input", "logits=input"):
        with pytest.raises(MetadataError, match="not an output and an input"):
            metadata.residuals_of({metadata.RESIDUAL: bad}, ["input"], ["output"])


@pytest.mark.parametrize("text", ["{", "[1]", '{"a b": 1}', '{"x": {"y": 1}}', '{"x": [[1]]}', "[" * 10**5])
def test_model_args_must_be_plain_keyword_arguments(text):
    with pytest.raises(MetadataError, match=r"effattn\.model_args"):
        metadata.model_args_of({metadata.MODEL_ARGS: text})
