"""Export the self-made float TFLite part of the model corpus (NHWC) with Keras + TFLiteConverter.

Developer tool, not run by CI.  Needs a *separate* virtualenv (never the project's .venv):

    python3 -m venv /work/corpus-tf-venv && . /work/corpus-tf-venv/bin/activate
    pip install tensorflow-cpu==2.21.0        # brings keras 3.15, numpy 2.x

Run through make_corpus.py, or directly:

    python benchmarks/corpus/export_tflite.py --out tests/data/corpus [--only NAME ...]

Weights are random (seeded) and made numerically sane: BatchNorm moving statistics are set, layer
by layer, to the statistics of the layer's real input on an N(0, 1) batch (gamma in [0.5, 1.5],
beta in [-0.2, 0.2]), so activations stay O(1); PReLU slopes are drawn in [0.1, 0.3]; the last
layer of each head is rescaled so its output has std ~1-2.  The converter folds the BatchNorms
into the convolutions.  Each file is checked with the TFLite interpreter (finite, 0.01 < std < 50,
output depends on the input, agrees with Keras) and its operator list is recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import OrderedDict

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
import tensorflow as tf
import keras
from keras import layers as L

LICENSE = "self-made (random weights, Keras layers); CC0 for the file"


# --------------------------------------------------------------------------------------------------
# architectures


def conv_bn(x, ch, k=3, s=1, act="relu", name=None):
    x = L.Conv2D(ch, k, strides=s, padding="same", use_bias=False, name=name)(x)
    x = L.BatchNormalization()(x)
    if act == "prelu":
        return L.PReLU(shared_axes=[1, 2])(x)
    if act:
        return L.Activation(act)(x)
    return x


def blaze_block(x, out_ch, stride=1):
    """BlazeFace single BlazeBlock: 5x5 depthwise + 1x1 conv, residual add; stride 2 takes the
    shortcut through 2x2 max-pooling; wider output pads the shortcut with zero channels."""
    in_ch = x.shape[-1]
    y = L.DepthwiseConv2D(5, strides=stride, padding="same", use_bias=False)(x)
    y = L.BatchNormalization()(y)
    y = L.Conv2D(out_ch, 1, use_bias=False)(y)
    y = L.BatchNormalization()(y)
    sc = x
    if stride == 2:
        sc = L.MaxPooling2D(2)(sc)
    if out_ch > in_ch:
        pad = out_ch - in_ch
        sc = L.Lambda(lambda t: keras.ops.pad(t, [[0, 0], [0, 0], [0, 0], [0, pad]]))(sc)
    return L.ReLU()(L.Add()([y, sc]))


def blazeface_like():
    inp = keras.Input((128, 128, 3), batch_size=1, name="input")
    x = conv_bn(inp, 16, k=5, s=2)                           # 64
    x = blaze_block(x, 16)
    x = blaze_block(x, 24, stride=2)                         # 32
    x = blaze_block(x, 24)
    x = blaze_block(x, 32, stride=2)                         # 16
    x = blaze_block(x, 32)
    f16 = blaze_block(x, 32)
    x = blaze_block(f16, 48, stride=2)                       # 8
    x = blaze_block(x, 48)
    f8 = blaze_block(x, 48)
    cls, reg = [], []
    for f, a in ((f16, 2), (f8, 6)):
        c = L.Conv2D(a, 1)(f)
        r = L.Conv2D(a * 16, 1)(f)
        cls.append(L.Reshape((-1, 1))(c))
        reg.append(L.Reshape((-1, 16))(r))
    scores = L.Concatenate(axis=1, name="classificators")(cls)
    boxes = L.Concatenate(axis=1, name="regressors")(reg)
    return keras.Model(inp, [boxes, scores], name="blazeface_like")


def landmark_regressor():
    inp = keras.Input((64, 64, 3), batch_size=1, name="input")
    x = conv_bn(inp, 16, s=2, act="prelu")                   # 32
    for ch, s in ((16, 1), (24, 2), (24, 1), (32, 2), (32, 1), (48, 2), (48, 1)):
        y = L.DepthwiseConv2D(3, strides=s, padding="same", use_bias=False)(x)
        y = L.BatchNormalization()(y)
        y = L.PReLU(shared_axes=[1, 2])(y)
        y = conv_bn(y, ch, k=1, act=None)
        if s == 1 and x.shape[-1] == ch:
            y = L.Add()([x, y])
        x = L.PReLU(shared_axes=[1, 2])(y)
    g = L.GlobalAveragePooling2D()(x)                        # MEAN
    lm = L.Dense(68 * 2, name="landmarks")(g)
    flag = L.Dense(1, activation="sigmoid", name="face_flag")(g)
    return keras.Model(inp, [lm, flag], name="landmark_regressor")


def seg_unet_like():
    inp = keras.Input((128, 128, 3), batch_size=1, name="input")
    e1 = conv_bn(inp, 16, s=2, act="hard_swish")             # 64
    x = L.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False)(e1)   # 32
    x = L.BatchNormalization()(x)
    e2 = conv_bn(x, 24, k=1, act="hard_swish")
    x = L.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False)(e2)   # 16
    x = L.BatchNormalization()(x)
    x = conv_bn(x, 32, k=1, act="hard_swish")
    # squeeze-excite
    se = L.GlobalAveragePooling2D(keepdims=True)(x)
    se = L.Conv2D(8, 1, activation="relu")(se)
    se = L.Conv2D(32, 1, activation="hard_sigmoid")(se)
    x = L.Multiply()([x, se])
    e3 = x
    x = L.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False)(e3)   # 8
    x = L.BatchNormalization()(x)
    x = conv_bn(x, 48, k=1, act="hard_swish")
    # decoder: transpose conv, bilinear and nearest upsampling, skip add / concat
    x = L.Conv2DTranspose(32, 3, strides=2, padding="same", use_bias=False)(x)  # 16
    x = L.BatchNormalization()(x)
    x = L.ReLU()(L.Add()([x, e3]))
    x = L.UpSampling2D(2, interpolation="bilinear")(x)                          # 32
    x = conv_bn(L.Concatenate()([x, e2]), 24, k=3)
    x = L.Resizing(64, 64, interpolation="nearest")(x)                          # 64
    x = conv_bn(L.Concatenate()([x, e1]), 16, k=3)
    x = L.Conv2D(1, 3, padding="same")(x)
    x = L.Resizing(128, 128, interpolation="bilinear")(x)                        # 128
    out = L.Activation("sigmoid", name="mask")(x)
    return keras.Model(inp, out, name="seg_unet_like")


def mobilenet_v3ish():
    """MobileNetV3-style classifier, symbolic batch (shape_signature -1)."""
    inp = keras.Input((96, 96, 3), name="input")
    x = conv_bn(inp, 16, s=2, act="hard_swish")              # 48
    for exp, ch, k, s, se, act in ((16, 16, 3, 2, True, "relu"), (48, 24, 3, 2, False, "relu"),
                                   (64, 24, 3, 1, False, "relu"), (72, 32, 5, 2, True, "hard_swish"),
                                   (96, 32, 5, 1, True, "hard_swish"), (96, 40, 5, 2, True,
                                                                        "hard_swish")):
        y = conv_bn(x, exp, k=1, act=act)
        y = L.DepthwiseConv2D(k, strides=s, padding="same", use_bias=False)(y)
        y = L.BatchNormalization()(y)
        y = L.Activation(act)(y)
        if se:
            z = L.GlobalAveragePooling2D(keepdims=True)(y)
            z = L.Conv2D(max(8, exp // 4), 1, activation="relu")(z)
            z = L.Conv2D(exp, 1, activation="hard_sigmoid")(z)
            y = L.Multiply()([y, z])
        y = conv_bn(y, ch, k=1, act=None)
        if s == 1 and x.shape[-1] == ch:
            y = L.Add()([x, y])
        x = y
    x = conv_bn(x, 96, k=1, act="hard_swish")
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(96, activation="hard_swish")(x)
    out = L.Dense(10, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name="mobilenet_v3ish")


def keras_mobilenet_v1():
    """keras.applications.MobileNet (v1) alpha=0.25 at 128x128, 10 classes."""
    return keras.applications.MobileNet(input_shape=(128, 128, 3), alpha=0.25, weights=None,
                                        classes=10, classifier_activation="softmax")


def resnet_avgpool():
    """Small ResNet-v1 (basic blocks with 1x1 projection shortcuts) ending in AVERAGE_POOL_2D +
    a 1x1 conv classifier, ReLU6, and dilated conv (SPACE_TO_BATCH_ND / BATCH_TO_SPACE_ND)."""
    inp = keras.Input((64, 64, 3), batch_size=1, name="input")
    x = conv_bn(inp, 8, s=1, act="relu6")
    for ch, s in ((8, 1), (16, 2), (24, 2), (32, 2)):
        y = conv_bn(x, ch, s=s, act="relu6")
        y = conv_bn(y, ch, act=None)
        sc = x if (s == 1 and x.shape[-1] == ch) else conv_bn(x, ch, k=1, s=s, act=None)
        x = L.ReLU(6.0)(L.Add()([y, sc]))
    x = L.Conv2D(32, 3, padding="same", dilation_rate=2, activation="relu")(x)
    x = L.AveragePooling2D(8)(x)
    x = L.Conv2D(10, 1)(x)
    out = L.Reshape((10,), name="logits")(x)
    return keras.Model(inp, out, name="resnet_avgpool")


MODELS = OrderedDict([
    ("tfl_blazeface_like", dict(build=blazeface_like, fp16=False,
        features=["detection-head", "multi-output", "depthwise", "depthwise-s2", "residual", "pad",
                  "maxpool", "reshape", "concat", "nhwc"],
        notes="BlazeFace-like detector, 128x128: BlazeBlocks (5x5 depthwise + 1x1, residual add, "
              "max-pool + channel-pad shortcut on stride 2), heads at 16x16 (2 anchors) and 8x8 (6 "
              "anchors) reshaped and concatenated: regressors [1,896,16], classificators [1,896,1]")),
    ("tfl_blazeface_like_fp16", dict(build=blazeface_like, fp16=True, same_as="tfl_blazeface_like",
        features=["detection-head", "multi-output", "fp16-weights", "dequantize", "depthwise",
                  "depthwise-s2", "residual", "pad", "maxpool", "reshape", "concat", "nhwc"],
        notes="the same Keras model and weights as tfl_blazeface_like, converted with "
              "supported_types=[tf.float16]: fp16 weight tensors behind DEQUANTIZE ops")),
    ("tfl_landmark_fp16", dict(build=landmark_regressor, fp16=True,
        features=["landmark", "multi-output", "fp16-weights", "dequantize", "prelu", "depthwise",
                  "depthwise-s2", "residual", "mean", "fully-connected", "nhwc"],
        notes="face-landmark-style regressor, 64x64: PReLU, depthwise (s1/s2), residual adds, "
              "global average (MEAN), two FULLY_CONNECTED heads (136 landmarks, sigmoid face flag); "
              "fp16 weights")),
    ("tfl_seg_unet_like", dict(build=seg_unet_like, fp16=False,
        features=["segmentation", "hardswish", "se", "mean", "depthwise-s2", "conv-transpose",
                  "resize-bilinear", "resize-nearest", "concat", "residual", "nhwc"],
        notes="U-Net-like segmenter, 128x128 -> 128x128x1 sigmoid mask: HardSwish encoder with "
              "squeeze-excite, TRANSPOSE_CONV, RESIZE_BILINEAR and RESIZE_NEAREST_NEIGHBOR "
              "upsampling, skip add/concat")),
    ("tfl_mobilenet_v3ish_dynbatch", dict(build=mobilenet_v3ish, fp16=False,
        features=["dynamic-batch", "hardswish", "se", "mean", "depthwise", "depthwise-s2",
                  "residual", "softmax", "fully-connected", "nhwc"],
        notes="MobileNetV3-style classifier, 96x96, 10 classes, softmax; Keras Input without a "
              "batch size, so the TFLite input has shape [1,96,96,3] with shape_signature "
              "[-1,96,96,3]")),
    ("tfl_keras_mobilenet_v1_025_fp16", dict(build=keras_mobilenet_v1, fp16=True,
        features=["keras-applications", "fp16-weights", "dequantize", "depthwise", "depthwise-s2",
                  "relu6", "softmax", "dynamic-batch", "nhwc"],
        notes="keras.applications.MobileNet(alpha=0.25, 128x128, classes=10, weights=None), fp16 "
              "weights; batch left symbolic as Keras builds it")),
    ("tfl_resnet_avgpool", dict(build=resnet_avgpool, fp16=False,
        features=["residual", "relu6", "avgpool", "dilated-conv", "nhwc"],
        notes="small ResNet-v1 with projection shortcuts, ReLU6, a dilated 3x3 conv, "
              "AVERAGE_POOL_2D and a 1x1-conv classifier, 64x64")),
])


# --------------------------------------------------------------------------------------------------


def _sub(model, tensor):
    return keras.Model(model.inputs, tensor)


def sanitize(model, seed):
    rng = np.random.default_rng(seed)
    shape = [2 if d is None else d for d in model.inputs[0].shape]
    shape[0] = 8
    x = rng.standard_normal(shape).astype(np.float32)
    for layer in model.layers:
        if isinstance(layer, L.PReLU):
            a = layer.get_weights()[0]
            layer.set_weights([rng.uniform(0.1, 0.3, a.shape).astype(np.float32)])
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            h = np.asarray(_sub(model, layer.input)(x, training=False))
            ax = tuple(range(h.ndim - 1))
            mean, var = h.mean(axis=ax), h.var(axis=ax) + 1e-3
            c = mean.shape[0]
            gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
            beta = rng.uniform(-0.2, 0.2, c).astype(np.float32)
            layer.set_weights([gamma, beta, mean.astype(np.float32), var.astype(np.float32)])
    # rescale the layer(s) producing each output: pre-activation centred, std ~1.5
    def producers(t, seen):
        op = t._keras_history.operation
        if id(op) in seen:
            return []
        seen.add(id(op))
        if isinstance(op, (L.Conv2D, L.Dense)):
            return [op]
        if isinstance(op, keras.layers.InputLayer) or not op._inbound_nodes:
            return []
        return [p for i in op._inbound_nodes[0].input_tensors for p in producers(i, seen)]

    for node in [p for out in model.outputs for p in producers(out, set())]:
        act = node.activation  # measure the pre-activation
        node.activation = keras.activations.linear
        h = np.asarray(_sub(model, node.output)(x, training=False))
        node.activation = act
        ax = tuple(range(h.ndim - 1))
        mean = h.mean(axis=ax)
        s = float((h - mean).std())
        if s > 0:
            w = node.get_weights()
            k = 1.5 / s
            new = [w[0] * k]
            if len(w) > 1:  # centre each output channel on the batch, plus a small offset
                new.append(((w[1] - mean) * k + rng.normal(0, 0.2, mean.shape)).astype(np.float32))
            node.set_weights(new)
    return x


def ops_of(tfl_bytes):
    interp = tf.lite.Interpreter(model_content=tfl_bytes)
    return sorted({d["op_name"] for d in interp._get_ops_details()})


def export(name, spec, out_dir, part_dir):
    base = spec.get("same_as", name)
    seed = 2000 + list(MODELS).index(base)
    keras.utils.set_random_seed(seed)
    model = spec["build"]()
    sanitize(model, seed)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if spec["fp16"]:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    data = conv.convert()
    path = os.path.join(out_dir, name + ".tflite")
    with open(path, "wb") as f:
        f.write(data)
    interp = tf.lite.Interpreter(model_path=path)
    interp.allocate_tensors()
    ind = interp.get_input_details()[0]
    shp = [int(d) for d in ind["shape"]]
    rng = np.random.default_rng(seed + 7)
    xs = [rng.standard_normal(shp).astype(np.float32) for _ in range(2)]
    outs = []
    for x in xs:
        interp.set_tensor(ind["index"], x)
        interp.invoke()
        outs.append({d["name"]: interp.get_tensor(d["index"]).copy()
                     for d in interp.get_output_details()})
    kout = model(xs[0], training=False)
    kout = kout if isinstance(kout, (list, tuple)) else [kout]
    stats = []
    for (oname, o), o2 in zip(outs[0].items(), outs[1].values()):
        assert np.isfinite(o).all(), f"{name}: non-finite output {oname}"
        sd = float(o.std())
        assert o.size < 4 or 0.01 < sd < 50, f"{name}: {oname} std {sd}"
        assert np.abs(o - o2).max() > 1e-4, f"{name}: {oname} does not depend on the input"
        # match to a Keras output by shape, report the smallest difference
        errs = [float(np.abs(np.asarray(k) - o).max()) for k in kout if tuple(k.shape) == o.shape]
        err = min(errs) if errs else float("nan")
        tol = 5e-2 if spec["fp16"] else 1e-3
        assert err < tol * max(1.0, float(np.abs(o).max())), f"{name}: keras vs tflite {err}"
        stats.append(f"{oname}: std {sd:.3g}, max|y| {float(np.abs(o).max()):.3g}, "
                     f"keras-vs-tflite {err:.1e}")
    ops = ops_of(data)
    nparams = model.count_params()
    entry = {
        "file": name + ".tflite",
        "format": "tflite",
        "source": (f"benchmarks/corpus/export_tflite.py (Keras {keras.__version__} + "
                   f"TFLiteConverter, tensorflow {tf.__version__}, seed {seed}"
                   + (", supported_types=[tf.float16]" if spec["fp16"] else "") + ")"),
        "license": LICENSE,
        "features": sorted(set(spec["features"] + ["random-weights", "float"])),
        "notes": (spec["notes"] + f"; {nparams:,} params; ops: {', '.join(ops)}; interpreter "
                  "output on N(0,1): " + " | ".join(stats)),
    }
    with open(os.path.join(part_dir, name + ".json"), "w") as f:
        json.dump(entry, f, indent=1)
    print(f"{name:34s} {len(data):>9,d} B {nparams:>8,d} params  ops={','.join(ops)}\n    "
          + " | ".join(stats), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/data/corpus")
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    os.makedirs(a.out, exist_ok=True)
    part = os.path.join(a.out, ".partial")
    os.makedirs(part, exist_ok=True)
    failed = []
    for name, spec in MODELS.items():
        if a.only and name not in a.only:
            continue
        try:
            export(name, spec, a.out, part)
        except Exception as e:
            failed.append(name)
            print(f"{name}: FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  flush=True)
    if failed:
        print("failed:", " ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
