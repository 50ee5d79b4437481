package lower

// extNaNNets are one-op networks of the ops of ir/ops_ext.go for
// TestNaNPropagationCompiled (21 channels: a partial last block, whose
// padding lanes sigmoid and clip mask to zero).
var extNaNNets = []struct{ name, src string }{
	{"sigmoid", `network n(x: f32[N, 21, 5, 5]) { return sigmoid(x) }`},
	{"tanh", `network n(x: f32[N, 16, 5, 5]) { return tanh(x) }`},
	{"silu", `network n(x: f32[N, 16, 5, 5]) { return silu(x) }`},
	{"hardswish", `network n(x: f32[N, 16, 5, 5]) { return hardswish(x) }`},
	{"relu6", `network n(x: f32[N, 16, 5, 5]) { return relu6(x) }`},
	{"clip", `network n(x: f32[N, 21, 5, 5]) { return clip(x, 0.5, 1.5) }`},
	{"sub", `network n(x: f32[N, 16, 5, 5]) { return x - maxpool(x, 3, stride=1, pad=1) }`},
	{"channel_mul", `network n(x: f32[N, 21, 5, 5]) { return x * sigmoid(global_avgpool(x)) }`},
	{"global_maxpool", `network n(x: f32[N, 21, 5, 5]) { return flatten(global_maxpool(x)) }`},
	{"plain_sigmoid", `network n(x: f32[N, 37]) { return tanh(sigmoid(x) - silu(x)) }`},
	// upsample and reshape (ir/ops_upsample.go, codegen/upsample.go).
	{"upsample_nearest", `network n(x: f32[N, 21, 5, 5]) { return upsample(x, scale=3) }`},
	{"upsample_bilinear", `network n(x: f32[N, 21, 5, 4]) { return upsample(x, mode="bilinear") }`},
	{"upsample_bilinear_x3", `network n(x: f32[N, 16, 3, 5]) { return upsample(x, scale=3, mode="bilinear") }`},
	{"upsample_align_corners", `network n(x: f32[N, 16, 3, 5]) { return upsample(x, mode="bilinear", align_corners=true) }`},
	{"reshape_4d", `network n(x: f32[N, 16, 4, 6]) { return relu(reshape(relu(x), (-1, 24, 4, 4))) }`},
	{"reshape_bottleneck", `network n(x: f32[N, 16, 4, 4]) {
    fc = dense(flatten(x), 256)
    conv = conv2d(reshape(fc, (-1, 16, 4, 4)), 16, 3, pad=1)
    return relu(conv)
}`},
	{"reshape_se", `network n(x: f32[N, 16, 4, 4]) { return x * sigmoid(reshape(dense(flatten(global_avgpool(x)), 16), (-1, 16, 1, 1))) }`},
}
