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
}
