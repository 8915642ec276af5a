"""Expected node attributes shared by the graph importer tests (Flax tracing and ONNX)."""

# A 3x3, stride-2 convolution from 3 to 8 channels without bias: 3 * 3 * 3 * 8 weights.
CONV_3X3_STRIDE_2 = {"channels_in": 3.0, "channels_out": 8.0, "kernel_size": 3.0, "stride": 2.0, "dilation": 1.0,
                     "groups": 1.0, "params": 216.0}
