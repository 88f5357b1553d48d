"""The ``effattn`` command line: one parser and one function per command (in :mod:`effattn.cli.commands`).

Parsers are declared here without importing the toolkit, so ``effattn --help`` answers at once; the
commands (and torch with them) are imported once a command runs.
"""

from __future__ import annotations

import argparse
import logging
import reprlib
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from .. import __version__, precisions
from ..bench import catalog
from ..errors import EffattnError, first_line

EPILOG = """\
typical session:
  effattn demo                                   # the whole path on the trained tiny segmenter
  effattn models                                 # what the zoo holds, with default shapes
  effattn export ea_segnet_tiny --pretrained -o seg.onnx --min 1x3x32x32 --opt 1x3x128x128 --max 4x3x512x512
  effattn run seg.onnx --shape 1x3x256x256       # run it (random input) on the best backend here
  effattn compare seg.onnx                       # parity against eager PyTorch, rebuilt from the file's metadata
  effattn quantize seg.onnx -o seg.int8.onnx     # INT8 QDQ graph (TensorRT/ONNX Runtime/OpenVINO), calibrated
  effattn bench --models efficient_attention ea_segnet_tiny --sizes 64 128 256
  effattn serve seg.onnx                         # KServe v2 HTTP server on 127.0.0.1:8000 (tritonclient works)
  effattn triton seg.onnx --repository models    # a Triton model repository for the same file

Shapes are written NxCxHxW (NxCxL for sequences). Run 'effattn COMMAND --help' for each command.
"""


# ------------------------------------------------------------------------------------------ parsers
class Number:
    """An argparse ``type``: an integer (or a finite float) from ``lo`` to ``hi``. Anything else - NaN, infinities,
    a negative thread count, a 4400-digit integer, 1e300 ms - is refused while parsing, with the range in the
    message, before any model loads. Every numeric option has one (tests/test_cli.py sweeps the parsers)."""

    def __init__(self, kind: type, lo: float, hi: float) -> None:
        self.kind, self.lo, self.hi = kind, lo, hi

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:  # not a number, or an int past Python's digit limit
            value = None
        if value is None or not self.lo <= value <= self.hi:  # NaN compares false: refused too
            raise argparse.ArgumentTypeError(f"expected {self}, got {reprlib.repr(text)}")
        return value

    def __str__(self) -> str:
        return f"{'an integer' if self.kind is int else 'a number'} from {self.lo} to {self.hi}"


SEED = Number(int, 0, 2**63 - 1)
THREADS = Number(int, 1, 4096)
COUNT = Number(int, 1, 65536)  # batch sizes, image sizes, samples
SECONDS = Number(float, 0.001, 86400.0)
PORT = Number(int, 1, 65535)
INSTANCES = Number(int, 1, 1024)
MIB = Number(float, 0.001, 2.0**20)


def _shape_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "shape profile (defaults: the model's own)",
        "NxCxHxW for a one-input model; name:NxCxHxW,name:... for each input (trtexec's --minShapes form)",
    )
    g.add_argument("--min", metavar="SHAPES", help="smallest input, e.g. 1x3x32x32 or image:1x3x32x32,mask:1x1x32x32")
    g.add_argument("--opt", metavar="SHAPES", help="the shape engines tune for, e.g. 1x3x128x128")
    g.add_argument("--max", metavar="SHAPES", help="largest input, e.g. 8x3x512x512")


def _model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "model",
        nargs=None if required else "?",
        help="a zoo name (see 'effattn models') or your own package.module:factory",
    )
    _weight_args(p)


def _weight_args(p: argparse.ArgumentParser | argparse._ArgumentGroup, checkpoint: str = "") -> None:
    """--checkpoint, --pretrained and --arg: what builds a model source's weights."""
    p.add_argument("--checkpoint", type=Path, help=f"state_dict to load (.safetensors, .pt, .pth){checkpoint}")
    p.add_argument("--pretrained", action="store_true", help="load the zoo's shipped trained weights")
    p.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="keyword argument for the model factory, e.g. --arg num_classes=19 (repeatable)",
    )


#: ``--backend`` of run, compare and serve: effattn.runtime.load's backends for an ONNX file or plan.
BACKEND_CHOICES = ("auto", "onnxruntime", "openvino", "tensorrt")
#: ``build --precision``: what an engine can be built as (auto: the graph's own, an FP32 export as FP16).
BUILD_PRECISIONS = ("auto", *precisions.names())
#: ``quantize --precision``: the QDQ graphs quantize writes.
QUANTIZE_PRECISIONS = precisions.quantized()


def _backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="auto (default): TensorRT if installed with a GPU, else ONNX Runtime on CUDA if present, "
        "else on the CPU OpenVINO for INT8 files and ONNX Runtime for the rest; a .plan always "
        "runs on TensorRT",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), help="force the device")
    p.add_argument(
        "--rtx",
        action="store_true",
        help="TensorRT for RTX (tensorrt_rtx) when building from ONNX; a .plan's sidecar says which it is",
    )


def _models(add) -> None:
    p = add(
        "models",
        "list the model zoo",
        "List registered models with their task, size, default shape profile and whether trained weights ship.",
    )
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'ea_*'")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _export(add) -> None:
    p = add(
        "export",
        "PyTorch -> checked, simplified, validated ONNX",
        "Export a model to ONNX with dynamic batch/height/width, run onnx.checker and shape inference, "
        "simplify with onnxslim, record metadata (model, profile, checkpoint sha256), then verify ONNX "
        "Runtime against eager PyTorch at the min, opt and max shapes. The file is written only if it "
        "passes. The weights: --checkpoint, --pretrained (zoo models that ship them) or, on purpose, "
        "--random-weights.\n\nexamples:\n  effattn export ea_segnet_tiny --pretrained -o seg.onnx --max 8x3x512x512\n"
        "  effattn export my_pkg.nets:build --checkpoint w.safetensors -o mine.onnx "
        "--min 1x3x32x32 --opt 1x3x128x128 --max 4x3x256x256",
    )
    _model_args(p)
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="export the model's random initialisation on purpose (without --checkpoint or --pretrained "
        "export refuses: a file of untrained weights passes parity yet answers nothing)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    _shape_args(p)
    p.add_argument(
        "--exporter",
        choices=("dynamo", "torchscript"),
        default="dynamo",
        help="torch.export-based (default) or the legacy TorchScript exporter as a fallback",
    )
    p.add_argument(
        "--opset",
        type=Number(int, 9, 99),
        default=18,
        help="ONNX opset (default 18; the exporter checks it against the installed onnx)",
    )
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    p.add_argument("--no-validate", action="store_true", help="skip the parity check (not recommended)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _run(add) -> None:
    p = add(
        "run",
        "run an ONNX file on a backend",
        "Run an exported model once and summarise its outputs. Inputs come from a .npy/.npz file or are "
        "random at --shape (default: the profile's opt shape); inputs are checked against the profile "
        "first.\n\nexample:\n  effattn run seg.onnx --shape 2x3x128x96 --output out.npz",
    )
    p.add_argument("onnx", type=Path, help="an .onnx file")
    p.add_argument("--input", type=Path, help=".npy (one input) or .npz (by input name)")
    p.add_argument(
        "--shape",
        "--shapes",
        dest="shape",
        metavar="SHAPES",
        help="random inputs of these shapes: 1x3x256x256 for one input, name:NxCxHxW,name:... for several "
        "(trtexec's --shapes)",
    )
    p.add_argument("--seed", type=SEED, default=0, help="seed for random inputs")
    p.add_argument("--output", type=Path, help="save outputs to this .npz")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    _backend_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _compare(add) -> None:
    p = add(
        "compare",
        "parity of an ONNX file against eager PyTorch",
        "Compare a backend's outputs with eager PyTorch FP32 on fresh random inputs at the profile's "
        "min/opt/max shapes (and task images for the trained model): max abs error, relative L2, cosine, "
        "argmax agreement for logits, and the attention branch of residual blocks. The reference model "
        "is rebuilt from the file's metadata unless you name one (MODEL, with --checkpoint/--arg): a zoo model, "
        "or a package.module:factory only if you name the same factory (or pass --trust-metadata), since a file "
        "never chooses code to run.\n\nexamples:\n  effattn compare seg.onnx\n"
        "  effattn compare mine.onnx my_pkg.nets:build --checkpoint w.safetensors\n\n"
        "(The weights are matched by their tensors, so w.pt and w.safetensors holding the same weights are the "
        "same checkpoint.) "
        "Exit code 1 if any check fails.\n\n"
        "your data: --load-inputs takes .npz files (arrays by input name, one feed each: what 'effattn run "
        "--input' reads) instead of random inputs; --save-inputs writes the feeds used, to replay them.\n"
        "  effattn compare seg.int8.onnx --load-inputs images.npz --tolerance int8\n\n"
        "--bisect FP32.onnx: where a low-precision file (FP16, BF16, INT8/FP8 QDQ) leaves its FP32 export, as "
        "Polygraphy's per-layer comparison: every float tensor both graphs name is made an output, both run "
        "on ONNX Runtime's CPU on the same inputs, and each tensor's rel L2, max abs, cosine and NaN/inf "
        "counts are listed in graph order with the first tensor out of tolerance (exit code 1 if one is).\n"
        "  effattn compare seg.int8.onnx --bisect seg.onnx --tolerance fp16",
    )
    p.add_argument("onnx", type=Path, help="an .onnx file written by 'effattn export'")
    _model_args(p, required=False)
    p.set_defaults(model=None)
    p.add_argument(
        "--trust-metadata",
        action="store_true",
        help="import and call a package.module:factory that "
        "the file's metadata names (by default only zoo models, or the factory you name yourself)",
    )
    p.add_argument("--seed", type=SEED, default=None, help="seed for inputs (default: fresh each run)")
    g = p.add_argument_group("inputs and tolerances")
    g.add_argument(
        "--load-inputs",
        type=Path,
        nargs="+",
        metavar="FILE.npz",
        help="compare on these feeds (.npz of arrays by input name, or .npy for one input; one feed per "
        "file, checked against the file's shape profile) instead of random inputs",
    )
    g.add_argument(
        "--save-inputs",
        type=Path,
        metavar="FILE.npz",
        help="write the feeds used: FILE.npz for one, else FILE.0.npz, FILE.1.npz, ... (read back with "
        "--load-inputs or 'effattn run --input')",
    )
    g.add_argument("--force", action="store_true", help="overwrite --save-inputs files")
    g.add_argument(
        "--tolerance",
        choices=precisions.names(),
        metavar="ROW",
        help="the limits of this precision's row instead of the file's own: "
        f"{', '.join(f'{p.name} (rel L2 {p.tolerance.rel_l2:g})' for p in precisions.TABLE)}",
    )
    g.add_argument(
        "--bisect",
        type=Path,
        metavar="FP32.onnx",
        help="compare tensor by tensor with this FP32 export on ONNX Runtime's CPU and name the first tensor "
        "out of tolerance (no eager model; one random feed at the opt shape unless --load-inputs)",
    )
    _backend_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _demo(add) -> None:
    p = add(
        "demo",
        "the whole path on one model, with parity and latency tables",
        "Take a zoo model (the trained tiny segmenter by default), export it, run it on the best backend "
        "available, and print a parity table against eager PyTorch and a latency table (eager vs the "
        "backend, measured in the same run).",
    )
    p.add_argument("--model", default="ea_segnet_tiny", help="zoo model (default: ea_segnet_tiny, trained)")
    p.add_argument(
        "--out", type=Path, default=Path("effattn-demo"), help="folder for the files (default ./effattn-demo)"
    )
    p.add_argument("--force", action="store_true", help="overwrite files from an earlier demo")
    p.add_argument("--device", choices=("cpu", "cuda"), help="force the device")
    p.add_argument("--seed", type=SEED, default=None, help="seed for inputs (default: fresh each run)")
    p.add_argument("--seconds", type=SECONDS, default=1.0, help="timing per backend (default 1 s)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _quantize(add) -> None:
    p = add(
        "quantize",
        "FP32 ONNX -> INT8 (or FP8) QDQ ONNX (TensorRT, ONNX Runtime, OpenVINO)",
        "Write an explicitly quantized copy of an FP32 export: signed symmetric INT8 (zero point 0) activations "
        "and per-channel weights on Conv/Gemm inputs, float biases, the attention softmaxes and context "
        "products kept in float - the form TensorRT's explicit quantization builds, and that ONNX Runtime "
        "and OpenVINO run. Calibration inputs: --calibration (a folder of .npy/.npz files or one .npz, batch "
        "axis first), else the zoo model's own sample images, else random inputs (with a warning). "
        "--precision fp8 writes the same graph in FP8 E4M3 for TensorRT on GPUs with FP8 tensor cores "
        "(compute capability 8.9+); CPUs run it for parity checks only. An -o ending in .xml writes OpenVINO IR "
        "(.xml + .bin) quantized by NNCF instead (the nncf extra), from the same calibration data, with "
        "--preset and --keep-float; 'effattn run' loads it on OpenVINO. Details: docs/precision.md.\n\n"
        "examples:\n  effattn quantize seg.onnx -o seg.int8.onnx\n"
        "  effattn quantize seg.onnx -o seg.int8.xml --preset mixed        # NNCF on OpenVINO\n"
        "  effattn quantize seg.onnx -o seg.int8.onnx --cpu-ir auto  # + seg.int8.xml beside, if faster on this CPU\n"
        "  effattn quantize resnet.onnx -o resnet.int8.onnx --calibration images.npz\n"
        "  effattn quantize seg.onnx -o seg.fp8.onnx --precision fp8 && effattn build seg.fp8.onnx -o seg.fp8.plan",
    )
    p.add_argument("onnx", type=Path, help="an FP32 .onnx file written by 'effattn export'")
    p.add_argument(
        "-o", "--output", type=Path, required=True, help="the quantized .onnx file (QDQ) or .xml (OpenVINO IR) to write"
    )
    p.add_argument(
        "--precision",
        choices=QUANTIZE_PRECISIONS,
        default=precisions.DEFAULT_QUANTIZED,
        help="int8 (default: every GPU, and OpenVINO's fast CPU path) or fp8 (E4M3, TensorRT on 8.9+ GPUs)",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        help="folder of .npy/.npz files or one .npz (keys: input names); "
        f"regular files only, at most 1 GiB of array data and {precisions.MAX_CALIBRATION_SAMPLES} samples "
        "in all, finite and not constant",
    )
    p.add_argument(
        "--samples",
        type=Number(int, 1, precisions.MAX_CALIBRATION_SAMPLES),
        default=precisions.CALIBRATION_SAMPLES,
        help=f"calibration images without --calibration ({precisions.CALIBRATION_SAMPLES}; at most "
        f"{precisions.MAX_CALIBRATION_SAMPLES})",
    )
    p.add_argument(
        "--preset",
        choices=precisions.NNCF_PRESETS,
        help="-o *.xml or --cpu-ir: NNCF's preset: performance (default; symmetric activations), mixed (asymmetric "
        "activations), default (none passed: NNCF's own choice)",
    )
    p.add_argument(
        "--keep-float",
        choices=precisions.NNCF_KEEP_FLOAT,
        help="-o *.xml or --cpu-ir: attention (default: NNCF skips the MatMuls the Efficient-Attention softmaxes "
        "feed, found by structure) or none (NNCF quantizes what it chooses)",
    )
    p.add_argument(
        "--cpu-ir",
        choices=precisions.CPU_IR_MODES,
        default="off",
        help="-o *.onnx, for CPUs: also make NNCF's INT8 IR of the same file from the same calibration data "
        "(--preset, --keep-float), check both on OpenVINO against ONNX Runtime FP32 on the FP32 file (fresh random "
        "inputs at the opt shape, the INT8 tolerances), time both interleaved (a few seconds), print the table, and "
        f"keep the IR beside the QDQ graph (model.int8.xml + .bin) when it is accurate and: auto, at least "
        f"{1 + precisions.CPU_IR_MARGIN:.2f}x as fast (or the QDQ graph is not accurate); always, whatever its speed. "
        "load()/'effattn run' with backend auto then runs it on this CPU in the .onnx's place, while its recorded "
        "sha256 is the .onnx's. off (default): the QDQ graph alone. The QDQ graph is written as without it",
    )
    p.add_argument(
        "--force", action="store_true", help="overwrite the output (with .xml or --cpu-ir: the IR's .xml and .bin too)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _build(add) -> None:
    p = add(
        "build",
        "ONNX -> TensorRT engine (or ONNX Runtime's optimised graph)",
        "Build an engine from an exported ONNX file. TensorRT: precision is the graph's (strongly typed "
        "networks; see docs/precision.md): an FP32 export is "
        "converted to the FP16 graph first, an INT8 (FP8) QDQ file from 'effattn quantize' builds an INT8 "
        "(FP8) engine (explicit quantization; FP8 needs compute capability 8.9+), a BF16 graph a BF16 one. "
        "Engines go through the engine cache (keyed by the ONNX bytes, precision, profiles, builder options, "
        "TensorRT version and GPU), with a shared timing cache beside it. ONNX Runtime: save the optimised "
        "graph (fused, constant-folded) to inspect or ship.\n\nexamples:\n  effattn build seg.onnx -o seg.plan\n"
        "  effattn build seg.onnx -o seg.ort.onnx --backend onnxruntime --precision fp32",
    )
    p.add_argument("onnx", type=Path, help="an .onnx file written by 'effattn export'")
    p.add_argument("-o", "--output", type=Path, required=True, help="the engine (.plan) or optimised .onnx to write")
    p.add_argument("--backend", choices=("tensorrt", "onnxruntime"), default="tensorrt")
    p.add_argument(
        "--precision",
        choices=BUILD_PRECISIONS,
        default="auto",
        help="auto (default): FP16 for an FP32 export (converted to the FP16 graph first), else the "
        "graph's own (FP16, BF16, or INT8/FP8 for a QDQ file from 'effattn quantize'); fp16/bf16 convert "
        "an FP32 file; fp32 keeps it; int8/fp8 need a QDQ file of that type",
    )
    p.add_argument("--fp16-flag", action="store_true", help="TensorRT 10 only: weakly typed build with the FP16 flag")
    p.add_argument(
        "--workspace", type=Number(float, 0.001, 1024.0), metavar="GIB", help="TensorRT workspace limit in GiB"
    )
    p.add_argument("--opt-level", type=Number(int, 0, 5), default=3, help="builder optimisation level 0-5 (3)")
    p.add_argument("--cache-dir", type=Path, help="engine cache (default: ~/.cache/effattn/engines)")
    p.add_argument("--rtx", action="store_true", help="use TensorRT for RTX (tensorrt_rtx)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="ONNX Runtime: device the graph is optimised for")
    p.add_argument("--force", action="store_true", help="overwrite the output")


def _inspect(add) -> None:
    p = add(
        "inspect",
        "what an ONNX file or engine holds",
        "Show inputs/outputs (with dynamic axes), opset, node and op counts, weight dtypes and effattn "
        "metadata of an ONNX file; or the build record (TensorRT version, GPU, profiles, I/O, layer "
        "precisions) of an engine.",
    )
    p.add_argument("file", type=Path, help=".onnx, .plan or .engine")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _profile(add) -> None:
    p = add(
        "profile",
        "where the time goes on OpenVINO, layer by layer",
        "Run an ONNX file on OpenVINO's CPU plugin with its per-layer performance counters (PERF_COUNT) and sum "
        "each executed layer's time by op type (Convolution, Softmax, Interpolate, Reorder, ...) and by kernel "
        "(brgconv_avx512_amx_i8, jit_avx512_bf16, ref_any_f32, ...), with the slowest layers - like "
        "benchmark_app -pc. Times are per run, averaged over --iterations after one warm-up run; the counters "
        "add a little overhead, so time with 'effattn bench'.\n\n"
        "examples:\n"
        "  effattn profile seg.int8.onnx --shape 1x3x256x256\n"
        "  effattn profile seg.int8.onnx --precision fp32 --top 30 -o seg.profile.json\n"
        "  effattn profile seg.int8.onnx --as-is   # without the runner's rewrite: what it saves",
    )
    p.add_argument("onnx", type=Path, help="an .onnx file written by 'effattn export' or 'effattn quantize'")
    p.add_argument("--input", type=Path, help=".npy (one input) or .npz (by input name)")
    p.add_argument(
        "--shape",
        "--shapes",
        dest="shape",
        metavar="SHAPES",
        help="random inputs of these shapes, NxCxHxW or name:NxCxHxW,... (default: the profile's opt shapes)",
    )
    p.add_argument("--seed", type=SEED, default=0, help="seed for random inputs")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="OpenVINO's precision for float ops (auto: BF16 where the CPU has it, as the runner does)",
    )
    p.add_argument(
        "--as-is",
        action="store_true",
        help="the graph as OpenVINO compiles the file, without the runner's rewrite (the output resize as MatMuls)",
    )
    p.add_argument("--threads", type=THREADS, default=None, help="inference threads (default: every core)")
    p.add_argument("--iterations", type=COUNT, default=20, help="runs to average (default 20)")
    p.add_argument("--top", type=COUNT, default=15, help="slowest layers to list (default 15)")
    p.add_argument("-o", "--output", type=Path, help="write the profile as JSON here (with the CPU and load)")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _bench_backends() -> str:
    """Every bench backend with the devices it runs on, wrapped for --help."""
    listed = ", ".join(f"{b.name} ({'/'.join(b.devices)})" for b in catalog.BACKENDS.values())
    return textwrap.fill(f"backends: {listed}", width=110, break_on_hyphens=False)


def _timing_args(p: argparse.ArgumentParser) -> None:
    """bench's per-row timing, trtexec's --duration, --iterations and --warmUp."""
    p.add_argument(
        "--seconds", type=SECONDS, default=1.0, help="minimum timing per row, trtexec's --duration (default 1)"
    )
    p.add_argument(
        "--iterations",
        type=Number(int, 1, 10**7),
        default=10,
        help="minimum timed calls per row (default 10), even past 10x --seconds",
    )
    p.add_argument(
        "--warmup",
        type=Number(float, 0.0, 60000.0),
        default=200.0,
        metavar="MS",
        help="warm-up per row before timing, in ms (default 200, trtexec's --warmUp)",
    )


def _bench(add) -> None:
    p = add(
        "bench",
        "latency, throughput and memory of files, or of every backend vs eager PyTorch",
        "Time .onnx and TensorRT .plan/.engine files as they are (trtexec/benchmark_app-style) on each backend "
        "that loads them - ONNX Runtime and OpenVINO on the CPU; ONNX Runtime and TensorRT on a GPU; eager "
        "PyTorch too when the file's metadata names a zoo model - at --shapes, else the file's profile's opt "
        "shapes, else the graph's static dims. Model sources (zoo names, package.module:factory): "
        "export each model once with a profile spanning the sizes and batches, then time eager PyTorch FP32 "
        "(the baseline, always) and each backend at every batch and size: median/p90/p99 after warm-up, "
        "throughput, peak memory (host RSS; device memory on GPU), the ratio to eager measured in the same "
        "run, and start-up time cold and with caches warm. With the EA block and the dot-product block in "
        "one run it also fits growth exponents (time and memory vs positions) and finds the crossover; "
        "dot-product sizes that cannot fit in memory are reported, not run.\n\n"
        "Every row: warm-up (--warmup), then at least --iterations calls and --seconds (trtexec's --duration), "
        "backends interleaved in rounds; median, p10/p90/p99 and mean latency, throughput.\n\n"
        f"{_bench_backends()}\n\nexamples:\n"
        "  effattn bench seg.onnx seg.int8.onnx --iterations 200 -o seg.json\n"
        "  effattn bench two_inputs.onnx --shapes image:1x3x64x64,mask:1x4\n"
        "  effattn bench --models efficient_attention ea_segnet_tiny --sizes 64 128 256 -o cpu.json --plot cpu.png\n"
        "  effattn bench --models efficient_attention dot_product_attention --sizes 32 64 128 256 512 "
        "--max-seconds 600\n"
        "  effattn bench --device cuda --batch 8 --sizes 128 --backends torch-fp16 tensorrt-fp16",
    )
    p.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help=".onnx, .plan or .engine files to time as they are (model sources too, as --models)",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="zoo names or your own package.module:factory, and files (default without FILE: "
        f"{' '.join(catalog.DEFAULT_MODELS)})",
    )
    p.add_argument(
        "--shapes",
        "--shape",
        metavar="SHAPES",
        help="files: the shapes to time, NxCxHxW or name:NxCxHxW,name:... (trtexec's --shapes); a "
        "package.module:factory model without a default_profile: its input, e.g. 1x3x64x64 (its rank and "
        "channels; --sizes and --batch set the rest)",
    )
    p.add_argument(
        "--sizes", nargs="+", type=COUNT, default=[64, 128, 256], help="model sources: square input sizes (H = W)"
    )
    p.add_argument("--batch", nargs="+", type=COUNT, default=[1], help="model sources: batch sizes (default 1)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--backends",
        nargs="+",
        default=None,
        metavar="BACKEND",
        help="besides eager torch (default: "
        + "; ".join(f"on {device} {', '.join(names)}" for device, names in catalog.DEFAULT_BACKENDS.items())
        + ")",
    )
    p.add_argument(
        "--threads", type=THREADS, default=None, help="threads for torch and ONNX Runtime (default: all cores)"
    )
    _timing_args(p)
    p.add_argument(
        "--max-seconds",
        type=SECONDS,
        default=None,
        help="stop measuring after this long; the rest are reported as skipped",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--no-startup", action="store_true", help="skip cold/warm start-up timing")
    p.add_argument("-o", "--output", type=Path, help="write results as JSON here")
    p.add_argument("--plot", type=Path, help="write a PNG: latency and memory vs positions, log-log")
    p.add_argument("--force", action="store_true", help="overwrite --output/--plot if they exist")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _serve_models(p: argparse.ArgumentParser) -> None:
    """serve's models and how they run: files, or model sources with ``--backend torch`` (its options refused
    with files)."""
    p.add_argument(
        "models",
        nargs="+",
        metavar="[NAME=]FILE|SOURCE",
        help=".onnx or .plan files (NAME defaults to the file name); with --backend torch, zoo names or "
        "package.module:factory (NAME defaults to the zoo name or the factory's)",
    )
    p.add_argument(
        "--backend",
        choices=(*BACKEND_CHOICES, "torch"),
        default="auto",
        help="for files as 'effattn run' picks (auto: the best here); torch: serve model sources on eager PyTorch",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="force the device (ONNX Runtime; torch: default cuda where torch sees one, else cpu)",
    )
    p.add_argument(
        "--threads",
        type=THREADS,
        default=None,
        help="ONNX Runtime intra-op threads per model (torch: its CPU threads, for the whole process)",
    )
    g = p.add_argument_group("--backend torch (model sources)")
    g.add_argument("--fused", action="store_true", help="run the Efficient-Attention blocks on the fused Triton kernel")
    g.add_argument("--fp16", action="store_true", help="compute in FP16 (inputs and outputs stay FP32)")
    _weight_args(g, checkpoint="; one model only")
    _shape_args(p)


def _serve(add) -> None:
    p = add(
        "serve",
        "KServe v2 HTTP server with dynamic batching (tritonclient works)",
        "Serve one or more models over the KServe v2 / Open Inference Protocol (the one Triton speaks, "
        "binary tensor data extension included), so tritonclient.http code runs unchanged here and on "
        "Triton; --grpc-port adds the gRPC flavour for tritonclient.grpc. Requests arriving within "
        "--max-queue-delay-ms are stacked into one engine call when their "
        "shapes allow (never mixing shapes); a full queue answers 503 at once. Bad requests get 400/404/413/"
        "504 with a message and the server keeps serving. Prometheus metrics at /metrics. Ctrl-C or SIGTERM "
        "finishes in-flight requests, then stops.\n\n"
        "--backend torch serves model sources instead of files: a zoo name or your own package.module:factory "
        "(with --checkpoint/--pretrained/--arg, and the zoo's shape profile or --min/--opt/--max), run by eager "
        "PyTorch - with --fused, its Efficient-Attention blocks on the fused Triton kernel; on CUDA when "
        "there is one. Eager code does not say which axis holds the batch, so each request runs alone "
        "(no dynamic batching), as for an ONNX graph whose batch axis cannot be proven.\n\n"
        "examples:\n  effattn serve seg.onnx\n"
        "  effattn serve seg=seg.onnx block=block.onnx --port 8001 --max-batch-size 16\n"
        "  effattn serve seg=ea_segnet_tiny --pretrained --backend torch --fused --fp16 --device cuda\n\n"
        "client:\n  import numpy as np, tritonclient.http as http\n"
        "  c = http.InferenceServerClient('127.0.0.1:8000')\n"
        "  x = http.InferInput('input', [1, 3, 64, 64], 'FP32'); x.set_data_from_numpy(image)\n"
        "  logits = c.infer('seg', [x]).as_numpy('logits')",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=PORT, default=8000)
    p.add_argument(
        "--grpc-port", type=PORT, help="also serve KServe v2 gRPC here (Triton uses 8001; needs tritonclient[grpc])"
    )
    _serve_models(p)
    p.add_argument("--max-batch-size", type=COUNT, default=8, help="items per engine call (capped by the profile)")
    p.add_argument(
        "--max-queue-delay-ms",
        type=Number(float, 0.0, 60000.0),
        default=2.0,
        help="how long a request waits for others (2)",
    )
    p.add_argument(
        "--max-queue", type=Number(int, 1, 10**6), default=64, help="requests waiting per model before 503 (64)"
    )
    p.add_argument("--instances", type=INSTANCES, default=1, help="engine calls in flight per model (1)")
    p.add_argument("--timeout", type=SECONDS, default=30.0, help="seconds a request may wait before 504 (30)")
    p.add_argument("--max-request-mb", type=MIB, default=64.0, help="largest request body before 413 (64)")
    p.add_argument(
        "--max-inflight-mb",
        type=MIB,
        default=256.0,
        help="request bytes held at once, HTTP and gRPC together, before 503 (256)",
    )
    p.add_argument(
        "--max-connections",
        type=Number(int, 1, 10**6),
        default=512,
        help="concurrent HTTP connections and gRPC calls before 503 (512)",
    )
    p.add_argument(
        "--keep-alive-s",
        type=Number(float, 0.001, 3600.0),
        default=5.0,
        help="idle connections, and request heads not complete, are closed after this long (5)",
    )
    p.add_argument(
        "--graceful-seconds",
        type=Number(float, 0.0, 3600.0),
        default=30.0,
        help="shutdown waits this long for in-flight requests",
    )


TRITON_DESCRIPTION = (
    "Write REPO/NAME/config.pbtxt and REPO/NAME/VERSION/model.onnx (ONNX Runtime, or OpenVINO with "
    "--backend openvino) or model.plan (TensorRT), ready to load: dims from the file's shape profile (-1 for "
    "dynamic axes; the batch axis becomes max_batch_size), dynamic batching, instances of the kind the model "
    "runs on, thread counts, a warm-up at the opt shape. Triton does not check the profile's min/max sizes: "
    "they head config.pbtxt as a comment and are printed. A plan runs only on the GPU model and TensorRT "
    "version that built it: build plans where Triton runs, or ship the ONNX file with --trt-accelerator "
    "(ONNX Runtime builds the engine for the profile's range once and caches it). --kserve adds a "
    "Dockerfile and a KServe InferenceService beside the models, on the same pinned Triton image.\n\n"
    "examples:\n  effattn triton seg.onnx --repository models                      # CPU, ONNX Runtime\n"
    "  effattn triton seg.int8.onnx --repository models --name seg --backend openvino --threads 4\n"
    "  effattn triton seg.fp16.onnx --repository models --name seg --trt-accelerator --fp16 --version 2\n"
    "  effattn triton seg.plan --repository models --preferred-batch-sizes 4 8 --kserve"
)


def _triton(add) -> None:
    p = add(
        "triton",
        "write a Triton Inference Server model repository (and a KServe manifest)",
        TRITON_DESCRIPTION,
    )
    p.add_argument("model_file", type=Path, help=".onnx file from 'effattn export' or .plan from 'effattn build'")
    p.add_argument("--repository", type=Path, required=True, help="the model repository folder")
    p.add_argument("--name", help="model name in the repository (default: the file name before its first dot)")
    p.add_argument(
        "--version",
        type=Number(int, 1, 2**63 - 1),
        default=1,
        help="the version folder to write (default 1); other versions are kept and must have the same I/O",
    )
    p.add_argument(
        "--version-policy", choices=("latest", "all"), default="latest", help="versions served (default latest)"
    )
    p.add_argument(
        "--backend",
        choices=("onnxruntime", "openvino"),
        default="onnxruntime",
        help="what serves an ONNX file: Triton's ONNX Runtime backend (default) or its OpenVINO backend (CPU; "
        "the fastest CPU path for INT8 files); a .plan is always TensorRT",
    )
    kinds = ("auto", "cpu", "gpu")
    p.add_argument("--kind", choices=kinds, default="auto", help="auto: GPU for a .plan or --trt-accelerator, else CPU")
    p.add_argument(
        "--max-batch-size",
        type=Number(int, 0, 2**31 - 1),
        help="0 turns batching off (default 8, capped by the profile; 0 with --backend openvino, whose backend "
        "pads every batch to max_batch_size)",
    )
    p.add_argument("--preferred-batch-sizes", type=Number(int, 1, 2**31 - 1), nargs="*", default=[])
    p.add_argument("--max-queue-delay-us", type=Number(int, 0, 3_600_000_000), default=2000)
    p.add_argument("--instances", type=INSTANCES, default=1, help="instance_group count")
    p.add_argument(
        "--threads",
        type=Number(int, 0, 4096),
        default=0,
        help="threads per instance: ONNX Runtime's intra_op_thread_count, OpenVINO's INFERENCE_NUM_THREADS "
        "(default 0: the backend uses the cores it sees - in a pod with a CPU limit, give that limit)",
    )
    p.add_argument(
        "--inter-op-threads",
        type=Number(int, 0, 4096),
        default=1,
        help="ONNX Runtime's inter_op_thread_count (default 1: effattn's graphs run sequentially)",
    )
    p.add_argument("--streams", type=Number(int, 1, 4096), help="OpenVINO's NUM_STREAMS (default: one per instance)")
    p.add_argument("--trt-accelerator", action="store_true", help="ONNX: run through Triton's TensorRT accelerator")
    p.add_argument("--fp16", action="store_true", help="with --trt-accelerator: precision_mode FP16")
    p.add_argument(
        "--trt-cache",
        default="/trt_cache",
        metavar="PATH",
        help="with --trt-accelerator: the cache root inside the container; engines and timings go to PATH/NAME "
        "(default /trt_cache; the printed docker line and the manifest mount a volume there)",
    )
    p.add_argument("--no-warmup", action="store_true", help="no model_warmup section")
    p.add_argument(
        "--kserve",
        action="store_true",
        help="also write REPO/Dockerfile and REPO/NAME.kserve.yaml (KServe InferenceService, runtime "
        "kserve-tritonserver)",
    )
    p.add_argument(
        "--storage-uri",
        metavar="URI",
        help="with --kserve: where the repository will be uploaded (default: a marked placeholder to replace)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace REPO/NAME/VERSION (only the files effattn wrote there) and a config.pbtxt that differs",
    )


#: The commands in the order --help lists them; each has ``_NAME(add)`` above and ``cmd_NAME`` in commands.py.
COMMANDS = (_models, _export, _run, _compare, _demo, _quantize, _build, _inspect, _profile, _bench, _serve, _triton)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="effattn",
        description="Export, verify and run networks with Efficient Attention "
        "(PyTorch -> ONNX -> ONNX Runtime / TensorRT / OpenVINO), every step checked against eager PyTorch.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"effattn {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info messages")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            parents=[common],
            help=help,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    for declare in COMMANDS:
        declare(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=logging.WARNING, format="effattn: %(message)s", stream=sys.stderr)
    logging.getLogger("effattn").setLevel(level)
    try:
        from . import commands  # the toolkit (torch, onnx, ...) loads only when a command runs

        getattr(commands, f"cmd_{args.command}")(args)
    except (EffattnError, OSError) as e:  # OSError: a path that cannot be made or written (a file in the way, ...)
        if args.debug:
            raise
        message = e if isinstance(e, EffattnError) else f"{e.strerror or first_line(e)}: {e.filename or ''}"
        print(f"effattn {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("effattn: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        return int(e.code or 0)
    except Exception as e:  # a fault effattn did not foresee (MemoryError, a library's own): still one line
        if args.debug:
            raise
        print(
            f"effattn {args.command}: error: {type(e).__name__}: {first_line(e)} (unexpected; --debug shows where)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
