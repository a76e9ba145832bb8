"""The cases from the issue "Reliability findings to fix first", always first in a campaign (case
indices 0..len(KNOWN)-1), each as it was reported: they must all end as clean errors once fixed."""
from __future__ import annotations

import json

from . import gen_packages
from .assets import BUNDLED, MNIST_FEEDS
from .case import Case

FEED = str(MNIST_FEEDS[0][0])


def squeezenet_dim_2_31(ctx) -> Case:
    """SqueezeNet 1.1 with graph.input[0] dim 0 = 2^31, compiled (it hangs in the build)."""
    import onnx

    m = onnx.load_from_string(ctx.assets.read(BUNDLED / "squeezenet1.1.onnx"))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2**31
    p = ctx.write("squeezenet1.1.onnx", m.SerializeToString())
    return Case("known.squeezenet_dim_2_31", "squeezenet1.1.onnx: graph.input[0] dim 0 = 2^31",
                argv=["compile", p, "-o", "out.tar"])


def empty_target(ctx) -> Case:
    return Case("known.empty_target", "--target ''", argv=["compile", "squeezenet1.1", "--target", "", "-o", "out.tar"])


def zero_byte_package(ctx) -> Case:
    p = ctx.write("empty.tar", b"")
    return Case("known.zero_byte_package", "0-byte package", argv=["run", p, "--input", FEED])


def _tampered(ctx, gen, what, edit) -> Case:
    members = gen_packages.members_of(ctx.assets.package("mnist"))
    edit(members)
    data = gen_packages.tar_bytes(gen_packages._entries(gen_packages.rehash(members)))
    p = ctx.write("pkg.tar", data)
    return Case(f"known.{gen}", what, argv=["run", p, "--input", FEED])


def _manifest_edit(fn):
    def edit(members):
        m = json.loads(members["manifest.json"])
        fn(m)
        members["manifest.json"] = json.dumps(m).encode()
    return edit


def manifest_no_model(ctx) -> Case:
    return _tampered(ctx, "manifest_no_model", "manifest without 'model' (hashes consistent)",
                     _manifest_edit(lambda m: m.pop("model")))


def manifest_no_target(ctx) -> Case:
    return _tampered(ctx, "manifest_no_target", "manifest without 'target' (hashes consistent)",
                     _manifest_edit(lambda m: m.pop("target")))


def manifest_target_string(ctx) -> Case:
    return _tampered(ctx, "manifest_target_string", "manifest 'target' = \"host\" (a string)",
                     _manifest_edit(lambda m: m.__setitem__("target", "host")))


def report_not_json(ctx) -> Case:
    return _tampered(ctx, "report_not_json", "report.json is not JSON (hash updated)",
                     lambda members: members.__setitem__("report.json", b"this is not json"))


def sparse_lib(ctx) -> Case:
    members = gen_packages.rehash(gen_packages.members_of(ctx.assets.package("mnist")))
    p = ctx.write("pkg.tar", gen_packages.sparse_tar(members))
    return Case("known.sparse_lib", "GNU sparse lib.so declaring 1 GiB", argv=["run", p, "--input", FEED])


def output_under_file(ctx) -> Case:
    return Case("known.output_under_file", "-o /etc/passwd/o.tar", argv=["compile", "mnist-8", "-o", "/etc/passwd/o.tar"])


def output_in_proc(ctx) -> Case:
    return Case("known.output_in_proc", "-o /proc/x.tar", argv=["compile", "mnist-8", "-o", "/proc/x.tar"])


def run_output_nodir(ctx) -> Case:
    pkg = str(ctx.assets.package("mnist"))
    return Case("known.run_output_nodir", "run --output nodir/x/out.npy",
                argv=["run", pkg, "--input", FEED, "--output", "nodir/x/out.npy"])


KNOWN = [squeezenet_dim_2_31, empty_target, zero_byte_package, manifest_no_model, manifest_no_target,
         manifest_target_string, report_not_json, sparse_lib, output_under_file, output_in_proc,
         run_output_nodir]
