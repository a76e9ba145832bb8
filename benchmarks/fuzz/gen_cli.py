"""Command-line cases: sqcc's own flags with empty, odd, out-of-range, unicode and very long values —
--target, --input-shape, --pass, --budget/--techniques, -o / --output paths that cannot be written
(``/etc/passwd/o.tar``, ``/proc/x.tar``, a missing directory, a directory, a 300-byte name), numeric
flags at 0 / negative / huge, model arguments that are not model files (``/dev/zero``, ``/dev/null``,
a directory, an empty string), and argv shapes argparse must reject. Valid spellings (a unicode file
name, ``-o`` into a directory to be created) are expected to succeed. Absolute output paths are
limited to ones that cannot be created: nothing outside the scratch directory is ever written."""
from __future__ import annotations

from .assets import MNIST_FEEDS, MODELS
from .case import Case

MODEL = "mnist-8"
LONG = "a" * 5000

TARGETS = ["", " ", "host:", ":", "host:extra", "arm_cpu", "arm_cpu:", "arm_cpu:nonexistent", "cuda", "cuda:",
           "cuda:sm_999", "cuda:0", "micro", "micro:", "micro:cortex-m99", "llvm", "llvm -mcpu=foo", "c",
           "hôst", "host\t", "HOST", "x" * 10000, "host;true", "{\"kind\": \"llvm\"}", "-host"]
SHAPES = ["", ":", "Input3:", ":1,1,28,28", "Input3:1,1,28", "Input3:0,1,28,28", "Input3:-1,1,28,28",
          "Input3:2147483648,1,28,28", "Input3:1,1,28,28;Input3:1,1,28,28", "nope:1,1,28,28",
          "Input3:1,1,2800000,28", "Input3:1,1,a,28", "Input3:1,,28,28", "Inpüt3:1,1,28,28", "Input3:1e3,1,28,28",
          "Input3:" + ",".join(["1"] * 1000), "Input3:1,1,28,28;", ";;;", "Input3:1,1,56,56"]
PASSES = ["", ":", "lowrank:", "lowrank:energy=", "lowrank:energy=2", "lowrank:energy=nan", "lowrank:energy=-1",
          "nosuch", "lowrank:bogus=1", "lowrank:energy=0.9,energy=0.8", "lowrank:rank=0", "lowrank:rank=1e9",
          "lowrank:scheme=nope", "int8", "binary:mode=xnor", "prune:sparsity=1", "prune:sparsity=-0.5",
          "share:bits=0", "share:bits=64", "shuffle:groups=0", "shuffle:groups=7", "dwsep:multiplier=0",
          "flatten:rank=0", "flatten:iters=-1", "poolhoist:window=-2", "lowrank:layers=nosuchlayer",
          "lowrank:energy=0.5:x", "lowrank,energy=0.5", "LOWRANK", "lowrank:" + LONG, "prune:sparsity=0.5"]
BUDGETS = ["", "macs=", "macs=0", "macs=-1", "macs=nan", "macs=inf", "macs=1e309", "params=2", "foo=0.5",
           "macs=0.5,params=0.5", "0.5", "macs=0.5=0.5", "macs=0x10", "macs=1", "params=1e-300"]
TECHNIQUES = ["", ",", "nosuch", "lowrank:nosuch", "lowrank,lowrank", "int8"]
OUTPUTS = ["/etc/passwd/o.tar", "/proc/x.tar", "nodir/x/out.tar", "", ".", "out.tar/", "ünïcödé ☃.tar",
           "a" * 300 + ".tar", "existing_dir", "-", "out", "out.npy", " ", "out.tar\n"]
RUN_OUTPUTS = ["nodir/x/out.npy", "/proc/x.npy", "/etc/passwd/o.npy", "", "existing_dir", "out",
               "a" * 300 + ".npy", "ünï ☃.npy", "out.npz", "out.npy/"]
SAFE_OUTPUTS = {"nodir/x/out.tar", "ünïcödé ☃.tar", "out", "out.npy", "ünï ☃.npy", "out.npz"}


def _compile(*extra) -> list:
    return ["compile", MODEL, "-o", "out.tar", *extra]


def target(ctx) -> Case:
    """--target with an empty, unknown, malformed or huge value."""
    v = ctx.rng.choice(TARGETS)
    return Case("cli.target", f"--target {v[:40]!r}", argv=_compile("--target", v))


def input_shape(ctx) -> Case:
    """--input-shape with malformed names and dimensions, for inspect or compile."""
    v = ctx.rng.choice(SHAPES)
    cmd = ["inspect", MODEL] if ctx.rng.random() < 0.4 else _compile()
    return Case("cli.input_shape", f"--input-shape {v[:40]!r}", argv=cmd + ["--input-shape", v])


def pass_spec(ctx) -> Case:
    """--pass with unknown names, parameters and values (once or twice)."""
    vs = [ctx.rng.choice(PASSES) for _ in range(ctx.rng.choice([1, 1, 2]))]
    argv = _compile(*[x for v in vs for x in ("--pass", v)])
    return Case("cli.pass", "--pass " + " --pass ".join(repr(v[:40]) for v in vs), argv=argv)


def budget(ctx) -> Case:
    """--budget (and --techniques) with malformed, impossible or extreme values."""
    v = ctx.rng.choice(BUDGETS)
    argv = _compile("--budget", v)
    if ctx.rng.random() < 0.3:
        t = ctx.rng.choice(TECHNIQUES)
        argv += ["--techniques", t]
        return Case("cli.budget", f"--budget {v!r} --techniques {t!r}", argv=argv)
    return Case("cli.budget", f"--budget {v!r}", argv=argv)


def output(ctx) -> Case:
    """compile -o at paths that cannot be written, odd names, and valid ones that must work."""
    v = ctx.rng.choice(OUTPUTS)
    if v == "existing_dir":
        (ctx.dir / v).mkdir()
        ctx.written.append(v)
    argv = ["compile", MODEL, "-o", v]
    return Case("cli.output", f"compile -o {v[:60]!r}", argv=argv, expect="success" if v in SAFE_OUTPUTS else None)


def run_output(ctx) -> Case:
    """run --output at paths that cannot be written, odd names, and valid ones that must work."""
    v = ctx.rng.choice(RUN_OUTPUTS)
    if v == "existing_dir":
        (ctx.dir / v).mkdir()
        ctx.written.append(v)
    argv = ["run", str(ctx.assets.package("mnist")), "--input", str(MNIST_FEEDS[0][0]), "--output", v]
    return Case("cli.run_output", f"run --output {v[:60]!r}", argv=argv,
                expect="success" if v in SAFE_OUTPUTS else None)


def numbers(ctx) -> Case:
    """Numeric flags at 0, negative, huge or non-numeric values."""
    pkg = str(ctx.assets.package("mnist"))
    feed = str(MNIST_FEEDS[0][0])
    flag, cmd = ctx.rng.choice([
        ("--print-top", ["run", pkg, "--input", feed]), ("--repeat", ["bench", pkg, "--warmup", "0"]),
        ("--warmup", ["bench", pkg, "--repeat", "2"]), ("--threads", ["bench", pkg, "--repeat", "2"]),
        ("--calibration-limit", _compile("--calibration", "calib", "--no-check")),
        ("--calibration-views", _compile("--calibration", "calib", "--no-check")),
        ("--trials", ["tune", MODEL]), ("--rpc-timeout", ["run", pkg, "--input", feed, "--rpc-tracker", "127.0.0.1:1"])])
    v = ctx.rng.choice(["0", "-1", "-5", "1e3", "abc", "", "99999999999999999999", "nan", "512"])
    if flag == "--trials" and v in ("512", "99999999999999999999"):
        v = "-7"  # a valid count starts a real tuning run: minutes, which the time limit would call a hang
    if "--calibration" in cmd:
        from .gen_feeds import _npy, _pb_array

        ctx.write("calib/a.npy", _npy(_pb_array(MNIST_FEEDS[0][0])))
    return Case("cli.numbers", f"{cmd[0]} {flag} {v!r}", argv=cmd + [flag, v])


def model_arg(ctx) -> Case:
    """The model argument: empty, '.', /dev/null, /dev/zero, a directory, an unknown name, a name with
    a trailing space, or a copy of mnist-8 under a unicode / spaced name (which must compile)."""
    how = ctx.rng.choice(["empty", "dot", "dev_null", "dev_zero", "dir", "unknown", "space", "unicode",
                          "no_suffix", "tflite_suffix", "traversal_name"])
    expect = None
    v = {"empty": "", "dot": ".", "dev_null": "/dev/null", "dev_zero": "/dev/zero", "unknown": "resnet9000",
         "space": "mnist-8 ", "traversal_name": "../../../../etc/passwd"}.get(how)
    if how == "dir":
        (ctx.dir / "m.onnx").mkdir()
        ctx.written.append("m.onnx")
        v = "m.onnx"
    elif how in ("unicode", "no_suffix", "tflite_suffix"):
        name = {"unicode": "modèle ☃ 1.onnx", "no_suffix": "model", "tflite_suffix": "m.tflite"}[how]
        v = ctx.write(name, ctx.assets.read(MODELS / "mnist-8.onnx"))
        expect = "success" if how != "tflite_suffix" else None
    cmd = ctx.rng.choice(["inspect", "compile"])
    argv = [cmd, v] + (["-o", "out.tar"] if cmd == "compile" else [])
    return Case("cli.model_arg", f"{cmd} model {how}", argv=argv, expect=expect)


def argv_shape(ctx) -> Case:
    """Whole argv oddities: no command, unknown command or flag, a flag without its value, '--'."""
    argv = ctx.rng.choice([[], ["nosuch"], ["compile"], ["compile", MODEL, "--nosuch"], ["compile", MODEL, "-o"],
                           ["run"], ["run", "--image"], ["compile", "--", MODEL, "-o", "out.tar"], ["-v"],
                           ["inspect", MODEL, "--input-shape"], ["compile", MODEL, "--target"], [LONG],
                           ["bench", "--repeat", "2"], ["farm", "--nosuch"], ["passes", "extra"],
                           ["compile", MODEL, "--pass"], ["run", "x.tar", "--image", "a", "--input", "b"]])
    return Case("cli.argv_shape", f"argv {argv!r}"[:80], argv=list(argv))


GENERATORS = {
    "cli.target": (target, 3), "cli.input_shape": (input_shape, 3), "cli.pass": (pass_spec, 3),
    "cli.budget": (budget, 2), "cli.output": (output, 3), "cli.run_output": (run_output, 2),
    "cli.numbers": (numbers, 2), "cli.model_arg": (model_arg, 2), "cli.argv_shape": (argv_shape, 1),
}
