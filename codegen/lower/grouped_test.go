package lower

import (
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/passes"
)

// TestCheckGrouped: Check accepts depthwise (any channel count, dilated
// too), block-multiple and every other grouped convolution (the masked
// block-diagonal fallback), including one of the plain network input.
func TestCheckGrouped(t *testing.T) {
	cases := []struct {
		name, conv string
		err        string
	}{
		{"depthwise", "conv2d(x, 24, 3, pad=1, groups=24)", ""},
		{"depthwise dilated stride 2", "conv2d(x, 24, 3, stride=2, pad=2, groups=24, dilation=2)", ""},
		{"groups 2 of 32", "conv2d(y, 64, 3, pad=1, groups=2)", ""},
		{"groups 3 of 8", "conv2d(x, 24, 3, pad=1, groups=3)", ""},
		{"depthwise multiplier 2", "conv2d(x, 48, 3, pad=1, groups=24)", ""},
		{"groups 2 of 12 on the RGB-style plain input", "conv2d(image, 24, 3, pad=1, groups=2)", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := "network net(image: f32[N, 24, 8, 8]) -> f32[N, 10] {\n" +
				"    x = relu(image)\n" +
				"    y = conv2d(x, 64, 1)\n" +
				"    z = " + c.conv + "\n" +
				"    return dense(flatten(global_avgpool(z)), 10)\n}\n"
			g, err := dsl.Load("net.kiln", []byte(src), dsl.Options{Batch: 1})
			if err != nil {
				t.Fatal(err)
			}
			s, err := passes.Run(g, passes.Options{Target: passes.Targets[0]})
			if err != nil {
				t.Fatal(err)
			}
			err = Check(s, x86)
			switch {
			case c.err == "" && err != nil:
				t.Fatalf("Check: %v", err)
			case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
				t.Fatalf("Check: got %v, want an error containing %q", err, c.err)
			}
		})
	}
}
