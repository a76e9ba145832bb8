"""Export the self-made ONNX part of the model corpus from real torchvision architectures.

Developer tool, not run by CI.  Needs a *separate* virtualenv (never the project's .venv):

    python3 -m venv /work/corpus-venv && . /work/corpus-venv/bin/activate
    pip install torch==2.14.1 torchvision==0.29.1 onnx==1.23.2 onnxruntime onnxscript

(used: torch 2.14.1, torchvision 0.29.1, onnx 1.23.2, onnxruntime 1.32.0, onnxscript for the dynamo
exporter).  Run through make_corpus.py, or directly:

    python benchmarks/corpus/export_torch.py --out tests/data/corpus [--only NAME ...]

Every model keeps the block structure of its torchvision architecture (the torchvision classes are
used wherever they take a width argument) but is narrowed, given few classes and a small input so the
file stays a few hundred KB.  Weights are random (seeded per model) and made numerically sane:
BatchNorm affine parameters are drawn in [0.5, 1.5] / [-0.2, 0.2], then the running statistics are
re-estimated on N(0, 1) inputs (cumulative average, BN in train mode, everything else in eval), so
activations stay O(1) through deep nets; layer-scale parameters (ConvNeXt) are set to O(0.5); the last
classifier layer is rescaled so the logits have std ~2.  The exported file is checked with
onnxruntime on a fresh random input (no NaN/Inf, 0.05 < std < 50, not all class scores equal) and
the PyTorch output is compared with it.

For each model a partial manifest entry (source, license, features, notes) is written to
OUT/.partial/NAME.json; make_corpus.py / manifest.py merges them into corpus.json.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torchvision
tv_resnet = importlib.import_module("torchvision.models.resnet")
tv_googlenet = importlib.import_module("torchvision.models.googlenet")
tv_mbv2 = importlib.import_module("torchvision.models.mobilenetv2")
tv_mbv3 = importlib.import_module("torchvision.models.mobilenetv3")
tv_eff = importlib.import_module("torchvision.models.efficientnet")
tv_shuffle = importlib.import_module("torchvision.models.shufflenetv2")
tv_densenet = importlib.import_module("torchvision.models.densenet")
tv_regnet = importlib.import_module("torchvision.models.regnet")
tv_mnasnet = importlib.import_module("torchvision.models.mnasnet")
tv_convnext = importlib.import_module("torchvision.models.convnext")
tv_squeezenet = importlib.import_module("torchvision.models.squeezenet")
tv_lraspp = importlib.import_module("torchvision.models.segmentation.lraspp")
tv_deeplab = importlib.import_module("torchvision.models.segmentation.deeplabv3")
tv_fcn = importlib.import_module("torchvision.models.segmentation.fcn")
tv_ssdlite = importlib.import_module("torchvision.models.detection.ssdlite")
from torchvision.models._utils import IntermediateLayerGetter

LICENSE = "self-made (random weights, architecture from torchvision, BSD-3-Clause); CC0 for the file"

# --------------------------------------------------------------------------------------------------
# architectures (narrowed, real block structure)


class SmallResNet(tv_resnet.ResNet):
    """torchvision ResNet with the stage widths (64,128,256,512) replaced by `planes`."""

    def __init__(self, block, layers, planes=(8, 16, 32, 64), num_classes=10, groups=1,
                 width_per_group=64, replace_stride_with_dilation=None):
        super().__init__(block, layers, num_classes=num_classes, groups=groups,
                         width_per_group=width_per_group,
                         replace_stride_with_dilation=replace_stride_with_dilation)
        # rebuild the stages at the requested widths with torchvision's own _make_layer
        self.inplanes = planes[0]
        self.dilation = 1
        rs = replace_stride_with_dilation or [False, False, False]
        self.conv1 = nn.Conv2d(3, planes[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.layer1 = self._make_layer(block, planes[0], layers[0])
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2, dilate=rs[0])
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2, dilate=rs[1])
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2, dilate=rs[2])
        self.fc = nn.Linear(planes[3] * block.expansion, num_classes)


def resnet18_small():
    return SmallResNet(tv_resnet.BasicBlock, [2, 2, 2, 2], planes=(4, 8, 16, 32), num_classes=100)


def resnet50_small():
    return SmallResNet(tv_resnet.Bottleneck, [3, 4, 6, 3], planes=(4, 8, 12, 24), num_classes=10)


def resnext_small():
    # Bottleneck width = int(planes * base_width / 64) * groups = planes
    return SmallResNet(tv_resnet.Bottleneck, [2, 2, 2, 2], planes=(4, 8, 16, 32), num_classes=10,
                       groups=4, width_per_group=16)


def _shrink_last(features: nn.Sequential, out_ch: int, act=nn.ReLU6):
    """Replace the final 1x1 ConvBNAct (fixed 1280 wide in torchvision) by one out_ch wide."""
    last = features[-1]
    in_ch = last[0].in_channels
    features[-1] = torchvision.ops.Conv2dNormActivation(in_ch, out_ch, kernel_size=1,
                                                        norm_layer=nn.BatchNorm2d, activation_layer=act)


def mobilenet_v2_small():
    m = tv_mbv2.MobileNetV2(num_classes=10, width_mult=0.15)
    _shrink_last(m.features, 160)
    m.classifier[1] = nn.Linear(160, 10)
    m.last_channel = 160
    return m


def mobilenet_v3_small_w025():
    return tv_mbv3.mobilenet_v3_small(width_mult=0.15, num_classes=10)


def mobilenet_v3_large_w035():
    return tv_mbv3.mobilenet_v3_large(width_mult=0.2, reduced_tail=True, num_classes=10)


def efficientnet_b0_small():
    setting, last = tv_eff._efficientnet_conf("efficientnet_b0", width_mult=0.15, depth_mult=0.5)
    return tv_eff.EfficientNet(setting, dropout=0.2, stochastic_depth_prob=0.2, num_classes=10,
                               last_channel=last)


def efficientnet_v2_small():
    cfg = [
        tv_eff.FusedMBConvConfig(1, 3, 1, 8, 8, 1),
        tv_eff.FusedMBConvConfig(4, 3, 2, 8, 12, 2),
        tv_eff.FusedMBConvConfig(4, 3, 2, 12, 16, 2),
        tv_eff.MBConvConfig(4, 3, 2, 16, 24, 2, 1.0, 1.0),
        tv_eff.MBConvConfig(4, 3, 1, 24, 32, 2, 1.0, 1.0),
        tv_eff.MBConvConfig(4, 3, 2, 32, 40, 2, 1.0, 1.0),
    ]
    return tv_eff.EfficientNet(cfg, dropout=0.2, stochastic_depth_prob=0.2, num_classes=10,
                               last_channel=128)


def shufflenet_v2_small():
    return tv_shuffle.ShuffleNetV2([4, 8, 4], [16, 24, 48, 96, 192], num_classes=10)


def densenet_small():
    return tv_densenet.DenseNet(growth_rate=4, block_config=(6, 12, 24, 16), num_init_features=16,
                                bn_size=2, num_classes=10)


class SmallGoogLeNet(tv_googlenet.GoogLeNet):
    """torchvision GoogLeNet (Inception v1) with every channel count divided by 8."""

    TABLE = [  # torchvision's (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) per module
        ("inception3a", (64, 96, 128, 16, 32, 32)), ("inception3b", (128, 128, 192, 32, 96, 64)),
        ("inception4a", (192, 96, 208, 16, 48, 64)), ("inception4b", (160, 112, 224, 24, 64, 64)),
        ("inception4c", (128, 128, 256, 24, 64, 64)), ("inception4d", (112, 144, 288, 32, 64, 64)),
        ("inception4e", (256, 160, 320, 32, 128, 128)), ("inception5a", (256, 160, 320, 32, 128, 128)),
        ("inception5b", (384, 192, 384, 48, 128, 128)),
    ]

    def __init__(self, num_classes=10, div=8):
        super().__init__(num_classes=num_classes, aux_logits=False, transform_input=False,
                         init_weights=True)
        Conv, Inc = tv_googlenet.BasicConv2d, tv_googlenet.Inception
        self.conv1 = Conv(3, 64 // div, kernel_size=7, stride=2, padding=3)
        self.conv2 = Conv(64 // div, 64 // div, kernel_size=1)
        self.conv3 = Conv(64 // div, 192 // div, kernel_size=3, padding=1)
        c = 192 // div
        for name, chans in self.TABLE:
            q = [max(2, x // div) for x in chans]
            setattr(self, name, Inc(c, *q))
            c = q[0] + q[2] + q[4] + q[5]
        self.fc = nn.Linear(c, num_classes)


def regnet_y_small():
    bp = tv_regnet.BlockParams.from_init_params(depth=8, w_0=8, w_a=8.0, w_m=2.0, group_width=8,
                                                se_ratio=0.25)
    return tv_regnet.RegNet(bp, stem_width=16, num_classes=10, norm_layer=nn.BatchNorm2d)


def mnasnet_small():
    m = tv_mnasnet.MNASNet(alpha=0.1, num_classes=10)
    # layers[14..16] = Conv 1x1 (->1280), BN, ReLU; narrow the fixed 1280 head to 128
    in_ch = m.layers[14].in_channels
    m.layers[14] = nn.Conv2d(in_ch, 128, 1, bias=False)
    m.layers[15] = nn.BatchNorm2d(128)
    m.classifier[1] = nn.Linear(128, 10)
    return m


def squeezenet_small():
    # SqueezeNet 1.1 layout with every Fire module at quarter width
    m = tv_squeezenet.SqueezeNet(version="1_1", num_classes=10)
    Fire = tv_squeezenet.Fire
    m.features = nn.Sequential(
        nn.Conv2d(3, 16, kernel_size=3, stride=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(16, 4, 16, 16), Fire(32, 4, 16, 16),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(32, 8, 32, 32), Fire(64, 8, 32, 32),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(64, 12, 48, 48), Fire(96, 12, 48, 48), Fire(96, 16, 64, 64), Fire(128, 16, 64, 64),
    )
    m.classifier[1] = nn.Conv2d(128, 10, kernel_size=1)
    return m


def convnext_small():
    C = tv_convnext.CNBlockConfig
    return tv_convnext.ConvNeXt([C(8, 16, 2), C(16, 24, 2), C(24, 48, 4), C(48, None, 2)],
                                stochastic_depth_prob=0.1, num_classes=10)


def lraspp_small():
    bb = tv_mbv3.mobilenet_v3_large(width_mult=0.2, dilated=True, reduced_tail=True)
    # LRASPP with torchvision's own builder logic, narrowed inter_channels
    feats = bb.features
    stage = [0] + [i for i, b in enumerate(feats) if getattr(b, "_is_cn", False)] + [len(feats) - 1]
    low, high = stage[-4], stage[-1]
    getter = IntermediateLayerGetter(feats, return_layers={str(low): "low", str(high): "high"})
    return tv_lraspp.LRASPP(getter, feats[low].out_channels, feats[high].out_channels, num_classes=6,
                            inter_channels=16)


class _DictOut(nn.Module):
    """Turns a dict-returning torchvision segmentation/detection model into a tuple of tensors."""

    def __init__(self, m, keys):
        super().__init__()
        self.m, self.keys = m, keys

    def forward(self, x):
        d = self.m(x)
        return tuple(d[k] for k in self.keys)


def deeplabv3_small():
    bb = SmallResNet(tv_resnet.Bottleneck, [1, 2, 2, 1], planes=(4, 8, 12, 16), num_classes=10,
                     replace_stride_with_dilation=[False, True, True])
    getter = IntermediateLayerGetter(bb, return_layers={"layer4": "out", "layer3": "aux"})
    head = nn.Sequential(tv_deeplab.ASPP(64, [6, 12, 18], out_channels=16),
                         nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 8, 1))
    aux = tv_fcn.FCNHead(48, 8)
    return _DictOut(tv_deeplab.DeepLabV3(getter, head, aux), ["out", "aux"])


def fcn_small():
    bb = SmallResNet(tv_resnet.BasicBlock, [2, 2, 2, 2], planes=(4, 8, 16, 32), num_classes=10)
    getter = IntermediateLayerGetter(bb, return_layers={"layer4": "out"})
    return _DictOut(tv_fcn.FCN(getter, tv_fcn.FCNHead(32, 5)), ["out"])


class SSDLiteHeads(nn.Module):
    """SSDLite (MobileNetV3 backbone + extra blocks + SSDLiteHead) up to the raw head outputs:
    box regression [N, A, 4] and class logits [N, A, C], the per-level heads reshaped and
    concatenated; no anchor decoding, no NMS."""

    def __init__(self, num_classes=4):
        super().__init__()
        bb = tv_mbv3.mobilenet_v3_large(width_mult=0.15, reduced_tail=True)
        feats = bb.features
        stage = [0] + [i for i, b in enumerate(feats) if getattr(b, "_is_cn", False)] + [len(feats) - 1]
        self.backbone = tv_ssdlite.SSDLiteFeatureExtractorMobileNet(
            feats, stage[-2], nn.BatchNorm2d, width_mult=0.125, min_depth=16)
        with torch.no_grad():
            outs = self.backbone.eval()(torch.zeros(1, 3, 192, 192))
        chans = [o.shape[1] for o in outs.values()]
        self.head = tv_ssdlite.SSDLiteHead(chans, [6] * len(chans), num_classes, nn.BatchNorm2d)

    def forward(self, x):
        f = list(self.backbone(x).values())
        out = self.head(f)
        return out["bbox_regression"], out["cls_logits"]


class SimpleBaselinePose(nn.Module):
    """'Simple Baselines' keypoint net: ResNet (torchvision BasicBlocks) + 3 ConvTranspose2d
    upsampling stages + 1x1 conv to K heatmaps."""

    def __init__(self, k=17):
        super().__init__()
        r = SmallResNet(tv_resnet.BasicBlock, [2, 2, 2, 2], planes=(4, 8, 16, 32))
        self.body = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3,
                                  r.layer4)
        layers, c = [], 32
        for _ in range(3):
            layers += [nn.ConvTranspose2d(c, 16, 4, stride=2, padding=1, output_padding=0, bias=False),
                       nn.BatchNorm2d(16), nn.ReLU(inplace=True)]
            c = 16
        self.deconv = nn.Sequential(*layers)
        self.final = nn.Conv2d(16, k, 1)

    def forward(self, x):
        return self.final(self.deconv(self.body(x)))


# --------------------------------------------------------------------------------------------------
# the corpus: name -> (builder, input CHW, exporter, opset, dynamic axes, features, notes)

MODELS = OrderedDict([
    ("tv_resnet18_w4", dict(build=resnet18_small, size=(3, 96, 96), exporter="torchscript", opset=13,
        dynamic="batch", features=["residual", "maxpool", "gap", "gemm"],
        notes="torchvision ResNet-18 (BasicBlock [2,2,2,2]) at stage widths 4/8/16/32, 100 classes")),
    ("tv_resnet50_w4", dict(build=resnet50_small, size=(3, 96, 96), exporter="torchscript", opset=17,
        dynamic=None, features=["residual", "bottleneck", "maxpool", "gap", "gemm"],
        notes="torchvision ResNet-50 (Bottleneck [3,4,6,3]) at widths 4/8/12/24 (x4 expansion), 10 classes")),
    ("tv_resnext_g4", dict(build=resnext_small, size=(3, 64, 64), exporter="torchscript", opset=11,
        dynamic="batch", features=["residual", "bottleneck", "grouped-conv"],
        notes="torchvision ResNeXt-style Bottleneck, groups=4, [2,2,2,2]")),
    ("tv_mobilenet_v2_015", dict(build=mobilenet_v2_small, size=(3, 96, 96), exporter="torchscript",
        opset=13, dynamic="batch", features=["depthwise", "depthwise-s2", "relu6", "residual", "gap",
                                               "gemm"],
        notes="torchvision MobileNetV2 width_mult=0.15; final 1x1 conv narrowed 1280->160; 10 classes")),
    ("tv_resnet18_w4_dynamo", dict(build=resnet18_small, size=(3, 96, 96),
        exporter="dynamo", opset=18, dynamic="batch", features=["residual", "maxpool", "gap", "gemm"],
        notes="same architecture and weights as tv_resnet18_w4, exported with the dynamo "
              "exporter (torch.export, opset 18, optimize=True): different node patterns")),
    ("tv_mobilenet_v3_small_015", dict(build=mobilenet_v3_small_w025, size=(3, 96, 96),
        exporter="torchscript", opset=17, dynamic=None,
        features=["hardswish", "hardsigmoid", "se", "depthwise", "depthwise-s2", "residual", "gap",
                  "gemm"],
        notes="torchvision mobilenet_v3_small(width_mult=0.15), 10 classes")),
    ("tv_mobilenet_v3_large_02", dict(build=mobilenet_v3_large_w035, size=(3, 128, 128),
        exporter="dynamo", opset=18, dynamic="batch",
        features=["hardswish", "hardsigmoid", "se", "depthwise", "depthwise-s2", "residual", "gap",
                  "gemm"],
        notes="torchvision mobilenet_v3_large(width_mult=0.2, reduced_tail=True), 10 classes, dynamo exporter")),
    ("tv_efficientnet_b0_015", dict(build=efficientnet_b0_small, size=(3, 96, 96),
        exporter="torchscript", opset=13, dynamic=None,
        features=["silu", "se", "depthwise", "depthwise-s2", "residual", "gap", "gemm"],
        notes="torchvision EfficientNet-B0 block table at width_mult=0.15, depth_mult=0.5; SiLU as "
              "Sigmoid*Mul at opset 13")),
    ("tv_efficientnet_v2_tiny", dict(build=efficientnet_v2_small, size=(3, 96, 96),
        exporter="dynamo", opset=18, dynamic=None,
        features=["silu", "se", "fused-mbconv", "depthwise", "residual", "gap", "gemm"],
        notes="torchvision EfficientNet with FusedMBConv + MBConv stages (EfficientNetV2 layout), "
              "narrow; dynamo exporter")),
    ("tv_shufflenet_v2_small", dict(build=shufflenet_v2_small, size=(3, 96, 96),
        exporter="torchscript", opset=11, dynamic="batch",
        features=["shuffle", "split", "concat", "depthwise", "depthwise-s2", "maxpool", "gemm"],
        notes="torchvision ShuffleNetV2 stages [4,8,4], channels [16,24,48,96,192]; channel_shuffle "
              "is view/transpose/view whose shapes come from Shape/Gather ops (batch is dynamic)")),
    ("tv_densenet_small", dict(build=densenet_small, size=(3, 64, 64), exporter="torchscript",
        opset=13, dynamic=None, features=["concat", "avgpool", "maxpool", "gap", "gemm"],
        notes="torchvision DenseNet-121 block config (6,12,24,16), growth 4, bn_size 2, 16 init features")),
    ("tv_googlenet_div8", dict(build=SmallGoogLeNet, size=(3, 96, 96), exporter="torchscript", opset=11,
        dynamic="batch", features=["inception", "concat", "maxpool-ceil", "gap", "gemm"],
        notes="torchvision GoogLeNet (Inception v1) modules, every channel count /8, no aux heads")),
    ("tv_regnet_y_small", dict(build=regnet_y_small, size=(3, 96, 96), exporter="torchscript",
        opset=17, dynamic=None, features=["grouped-conv", "se", "residual", "gap", "gemm"],
        notes="torchvision RegNet-Y (SE, group width 8) depth 8, w_0=8, w_a=8, w_m=2, stem 16")),
    ("tv_mnasnet_01", dict(build=mnasnet_small, size=(3, 96, 96), exporter="torchscript", opset=13,
        dynamic="batch", features=["depthwise", "depthwise-s2", "residual", "gap", "gemm"],
        notes="torchvision MNASNet alpha=0.1; fixed 1280 head narrowed to 128")),
    ("tv_squeezenet_quarter", dict(build=squeezenet_small, size=(3, 96, 96), exporter="dynamo",
        opset=18, dynamic="batch", features=["fire", "concat", "maxpool-ceil", "gap"],
        notes="torchvision SqueezeNet 1.1 layout, Fire modules at quarter width, 10 classes, LSUV-style init (no BN), dynamo "
              "exporter")),
    ("tv_convnext_tiny_small", dict(build=convnext_small, size=(3, 64, 64), exporter="torchscript",
        opset=17, dynamic=None, features=["layernorm", "gelu", "depthwise", "permute", "residual",
                                           "layer-scale", "gap", "gemm"],
        notes="torchvision ConvNeXt blocks (7x7 depthwise, LayerNorm, GELU via Erf, layer scale) "
              "stages 8/16/24/48 x [2,2,4,2]")),
    ("tv_lraspp_mbv3_02", dict(build=lraspp_small, size=(3, 128, 128), exporter="torchscript",
        opset=13, dynamic=None, wrap=lambda m: _DictOut(m, ["out"]),
        features=["segmentation", "resize", "hardswish", "se", "dilated-conv", "depthwise", "gap"],
        notes="torchvision LRASPP on mobilenet_v3_large(width_mult=0.2, dilated=True, reduced_tail), inter 16, 6 classes; "
              "bilinear Resize to low-level and to input size")),
    ("tv_deeplabv3_dyn", dict(build=deeplabv3_small, size=(3, 96, 96), exporter="torchscript",
        opset=11, dynamic="batch,height,width",
        features=["segmentation", "resize", "dilated-conv", "multi-output", "aspp", "gap",
                  "dynamic-spatial", "dynamic-batch"],
        notes="torchvision DeepLabV3 (ASPP rates 6/12/18, 32 wide) + FCNHead aux output on a dilated "
              "ResNet-Bottleneck backbone (planes 4/8/12/16); N, H and W all symbolic, so Resize sizes come from Shape "
              "ops; two outputs (out, aux)")),
    ("tv_fcn_resnet18_w4", dict(build=fcn_small, size=(3, 96, 96), exporter="dynamo", opset=18,
        dynamic=None, features=["segmentation", "resize", "residual"],
        notes="torchvision FCN head on a ResNet-18-style backbone (widths 4..32), bilinear upsample "
              "to the input size; dynamo exporter")),
    ("tv_ssdlite_heads", dict(build=SSDLiteHeads, size=(3, 192, 192), exporter="torchscript",
        opset=13, dynamic="batch",
        features=["detection-head", "multi-output", "hardswish", "se", "depthwise", "depthwise-s2",
                  "concat", "reshape", "transpose"],
        notes="torchvision SSDLite: MobileNetV3-Large(0.15, reduced tail) feature extractor + extra "
              "blocks (x0.125) + SSDLiteHead, 6 anchors/location, 4 classes; outputs raw bbox_regression "
              "[N,A,4] and cls_logits [N,A,4] (no anchor decoding, no NMS)")),
    ("tv_keypoint_simplebaseline", dict(build=SimpleBaselinePose, size=(3, 128, 96),
        exporter="torchscript", opset=11, dynamic=None,
        features=["keypoint", "conv-transpose", "residual", "non-square-input"],
        notes="Simple Baselines pose net: ResNet-18-style backbone + 3 ConvTranspose2d(4, s2) + 1x1 "
              "conv to 17 heatmaps; 128x96 input")),
])

# --------------------------------------------------------------------------------------------------


def lsuv(model: nn.Module, size, g):
    """For nets without normalisation layers (SqueezeNet): layer by layer, centre each conv's
    output channels on a random batch and scale them to unit variance (LSUV-style init)."""
    model.eval()
    x = torch.randn((16,) + tuple(size), generator=g)
    for conv in [m for m in model.modules() if isinstance(m, nn.Conv2d)]:
        box = {}
        h = conv.register_forward_hook(lambda m, i, o: box.setdefault("y", o))
        model(x)
        h.remove()
        y = box["y"]
        std = y.std(dim=(0, 2, 3)).clamp_min(1e-6)
        mean = y.mean(dim=(0, 2, 3))
        conv.weight.div_(std.view(-1, 1, 1, 1))
        b = (conv.bias if conv.bias is not None else torch.zeros_like(mean))
        conv.bias.copy_((b - mean) / std + 0.1 * torch.randn(mean.shape, generator=g))


def sanitize(model: nn.Module, size, seed: int):
    """Random but numerically sane weights (see module docstring)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if not any(isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) for m in model.modules()):
            lsuv(model, size, g)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_((torch.rand(m.bias.shape, generator=g) - 0.5) * 0.4)
                m.reset_running_stats()
                m.momentum = None  # cumulative average
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_((torch.rand(m.bias.shape, generator=g) - 0.5) * 0.2)
            elif isinstance(m, tv_convnext.CNBlock):
                m.layer_scale.copy_(torch.rand(m.layer_scale.shape, generator=g) * 0.5 + 0.25)
        # re-estimate BN statistics: BN in train mode, everything else (dropout, stochastic depth) eval
        model.eval()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
        for _ in range(6):
            model(torch.randn((8,) + tuple(size), generator=g))
        model.eval()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
        # rescale the final classifier so that logits have std ~2
        last = None
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                last = m
        x = torch.randn((8,) + tuple(size), generator=g)
        y = model(x)
        y0 = y[0] if isinstance(y, (tuple, list)) else y
        if isinstance(y0, dict):
            y0 = next(iter(y0.values()))
        s = float(y0.std())
        if last is not None and s > 0 and not (0.5 < s < 5.0):
            last.weight.mul_(2.0 / s)
            if last.bias is not None:
                last.bias.mul_(2.0 / s)


def strip_metadata(path):
    """Drop the dynamo exporter's per-node/per-value metadata (source stack traces, FX names):
    about a third of a small file, no effect on the graph."""
    import onnx
    m = onnx.load(path)
    for n in m.graph.node:
        del n.metadata_props[:]
        n.doc_string = ""
    for v in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        del v.metadata_props[:]
    for i in m.graph.initializer:
        del i.metadata_props[:]
    del m.metadata_props[:]
    onnx.save(m, path)


def export(name: str, spec: dict, out_dir: str, partial_dir: str):
    # a "_dynamo" twin shares seed, hence weights, with its TorchScript original
    base = name[: -len("_dynamo")] if name.endswith("_dynamo") else name
    seed = 1000 + list(MODELS).index(base)
    torch.manual_seed(seed)
    model = spec["build"]()
    if "wrap" in spec:
        model = spec["wrap"](model)
    sanitize(model, spec["size"], seed)
    model.eval()
    size = spec["size"]
    x = torch.randn((1,) + tuple(size), generator=torch.Generator().manual_seed(seed + 7))
    with torch.no_grad():
        ref = model(x)
    refs = list(ref) if isinstance(ref, (tuple, list)) else [ref]
    out_names = ["output"] if len(refs) == 1 else (
        spec.get("output_names") or [f"output_{i}" for i in range(len(refs))])
    if name == "tv_deeplabv3_dyn":
        out_names = ["out", "aux"]
    if name == "tv_ssdlite_heads":
        out_names = ["bbox_regression", "cls_logits"]
    dyn_axes = None
    if spec["dynamic"]:
        dims = spec["dynamic"].split(",")
        ax = {0: "batch"}
        if "height" in dims:
            ax.update({2: "height", 3: "width"})
        dyn_axes = {"input": ax}
        for o in out_names:
            dyn_axes[o] = dict(ax) if "height" in dims else {0: "batch"}
    path = os.path.join(out_dir, name + ".onnx")
    kw = dict(input_names=["input"], output_names=out_names, opset_version=spec["opset"])
    if spec["exporter"] == "torchscript":
        torch.onnx.export(model, (x,), path, dynamo=False, do_constant_folding=True,
                          dynamic_axes=dyn_axes, **kw)
    else:
        torch.onnx.export(model, (x,), path, dynamo=True, dynamic_axes=dyn_axes, optimize=True,
                          external_data=False, **kw)
        strip_metadata(path)
    # check with onnxruntime
    import onnx
    import onnxruntime as ort
    onnx.checker.check_model(onnx.load(path))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})
    stats = []
    for r, o in zip(refs, got):
        err = float(np.abs(r.numpy() - o).max())
        assert np.isfinite(o).all(), f"{name}: NaN/Inf in onnxruntime output"
        sd = float(o.std())
        assert 0.05 < sd < 50, f"{name}: output std {sd}"
        assert err < 1e-3 * max(1.0, float(np.abs(o).max())), f"{name}: torch vs ort {err}"
        stats.append(f"std {sd:.3g}, max|y| {float(np.abs(o).max()):.3g}, torch-vs-ort {err:.1e}")
    # second random input: class scores not all equal, outputs differ between inputs
    x2 = np.random.default_rng(seed).standard_normal((1,) + tuple(size)).astype(np.float32)
    got2 = sess.run(None, {"input": x2})
    assert np.abs(got2[0] - got[0]).max() > 1e-3, f"{name}: output does not depend on input"
    if got[0].ndim == 2:
        assert got[0].max() - got[0].min() > 0.1, f"{name}: class scores nearly equal"
    nparams = sum(p.numel() for p in model.parameters())
    entry = {
        "file": name + ".onnx",
        "format": "onnx",
        "source": (f"benchmarks/corpus/export_torch.py ({spec['exporter']} exporter, opset "
                   f"{spec['opset']}, torch {torch.__version__.split('+')[0]}, torchvision "
                   f"{torchvision.__version__.split('+')[0]}, seed {seed})"),
        "license": LICENSE,
        "features": sorted(set(spec["features"]
                               + (["dynamic-batch"] if spec["dynamic"] else ["static"])
                               + (["multi-output"] if len(refs) > 1 else [])
                               + ["random-weights", "nchw", f"opset{spec['opset']}",
                                  "exporter-" + spec["exporter"]])),
        "notes": (spec["notes"] + f"; {nparams:,} params; input N(0,1); ort output: "
                  + " | ".join(stats)),
    }
    with open(os.path.join(partial_dir, name + ".json"), "w") as f:
        json.dump(entry, f, indent=1)
    print(f"{name:32s} {os.path.getsize(path):>9,d} B  {nparams:>8,d} params  " + " | ".join(stats),
          flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/data/corpus")
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    part = os.path.join(a.out, ".partial")
    os.makedirs(part, exist_ok=True)
    import warnings
    warnings.filterwarnings("ignore")
    failed = []
    for name, spec in MODELS.items():
        if a.only and name not in a.only:
            continue
        try:
            export(name, spec, a.out, part)
        except Exception as e:  # keep going; report at the end
            failed.append(name)
            print(f"{name}: FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  flush=True)
    if failed:
        print("failed:", " ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
