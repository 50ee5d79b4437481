package dsl

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/ir"
)

// TestComparisons folds each condition inside `image * 2 if COND else
// image * 3` and reads the chosen branch from the mul constant.
func TestComparisons(t *testing.T) {
	tests := []struct {
		cond string
		want bool
	}{
		{"1 == 1", true},
		{"1 != 1", false},
		{"1 < 2", true},
		{"2 <= 2", true},
		{"3 > 2.5", true},
		{"2 >= 2.5", false},
		{"4 / 2 == 2", true}, // a float and an int compare by value
		{"k == 3", true},
		{"k - 1 > 1", true}, // arithmetic binds tighter than comparison
		{"true == true", true},
		{"true != false", true},
		{"(1, 2) == (1, 2)", true},
		{"(1, 2) != (1, 2)", false},
		{"3x3 == (3, 3)", true},
		{"(1, 2) == (1, 2, 3)", false},
		{"stride != (1, 1)", true},
		{`"a" == "a"`, true},
		{"not false", true},
		{"not not true", true},
		{"not 1 == 2", true}, // not binds looser than ==
		{"true and false", false},
		{"false or true", true},
		{"true or false and false", true}, // and binds tighter than or
		{"(true or false) and false", false},
		{"k != 1 or channels(image) != 8", true},
		{"k == 3 and channels(image) == 4", true},
		{"(1 < 2 if true else false)", true},
		// Short circuit: the right operand is not evaluated, so its error
		// (a comparison of a tensor) is never reported.
		{"false and image > 0", false},
		{"true or image > 0", true},
	}
	for _, tc := range tests {
		t.Run(tc.cond, func(t *testing.T) {
			src := "network n(image: f32[N, 4, 2, 2], k=3, stride=(2, 2)) {\n    return image * 2 if " + tc.cond + " else image * 3\n}"
			g := mustLoad(t, src, Options{})
			out := g.Nodes[g.Outputs[0]]
			if got := out.Attrs.Float("c") == 2; got != tc.want {
				t.Errorf("%s: got %v, want %v", tc.cond, got, tc.want)
			}
		})
	}
}

const resnetBlock = `
block basic(x, cout, stride=1) {
    cin = channels(x)
    conv1 = conv2d(x, cout, 3, stride=stride, pad=1, bias=false)
    if stride != 1 or cin != cout {
        downsample = seq {
            conv2d(x, cout, 1, stride=stride, bias=false)
            batchnorm(_)
        }
    } else if cin > 100 {
        downsample = relu(x)
    } else {
        downsample = x
    }
    return relu(conv1 + downsample)
}
block early(x, skip) {
    if skip {
        return x
    }
    y = conv2d(x, 8, 1)
    return y
}
`

// TestIfStatement checks that only the chosen branch of an if statement is
// elaborated (its parameters exist, the other's do not), that branches share
// the body's variables and scope path, and that a return inside a branch
// returns from the block.
func TestIfStatement(t *testing.T) {
	tests := []struct {
		name, call string
		want       []string
	}{
		{"identity", "basic(image, 8)", []string{"b.conv1.weight 8x8x3x3"}},
		{"projection by width", "basic(image, 16)", []string{"b.conv1.weight 16x8x3x3", "b.downsample.0.weight 16x8x1x1",
			"b.downsample.1.weight 16", "b.downsample.1.bias 16", "b.downsample.1.running_mean 16 buffer", "b.downsample.1.running_var 16 buffer"}},
		{"projection by stride", "basic(image, 8, stride=2)", []string{"b.conv1.weight 8x8x3x3", "b.downsample.0.weight 8x8x1x1",
			"b.downsample.1.weight 8", "b.downsample.1.bias 8", "b.downsample.1.running_mean 8 buffer", "b.downsample.1.running_var 8 buffer"}},
		{"early return", "early(image, true)", nil},
		{"no early return", "early(image, false)", []string{"b.y.weight 8x8x1x1", "b.y.bias 8"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := resnetBlock + "network n(image: f32[N, 8, 8, 8]) {\n    b = " + tc.call + "\n    return b\n}"
			g := mustLoad(t, src, Options{})
			if diff := cmp.Diff(tc.want, paramList(g)); diff != "" {
				t.Errorf("params (-want +got):\n%s", diff)
			}
		})
	}
}

// TestNestedCallWarning checks the warning for a parameter-creating call
// nested in an assigned expression: given to Options.Warn when the load
// succeeds, with severity warning and the "warning:" prefix, once per
// position; and no warning for the idioms that name as intended.
func TestNestedCallWarning(t *testing.T) {
	tests := []struct {
		name, body string
		want       []string // positions and message starts
	}{
		{"nested conv", "a = batchnorm(conv2d(image, 8, 1))\n    return a",
			[]string{"test.kiln:2:19: warning: conv2d(...) nested in an expression named a creates weight, bias, not names under a"}},
		{"operand", "a = 2 * dense(flatten(image), 3)\n    return a",
			[]string{"test.kiln:2:13: warning: dense(...) nested in an expression named a creates weight, bias, not names under a"}},
		{"no params", "a = relu(flatten(image))\n    return a", nil},
		{"returned", "return relu(conv2d(image, 8, 1))", nil},
		{"assigned first", "c = conv2d(image, 8, 1)\n    a = batchnorm(c)\n    return a", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			opts := Options{Warn: func(d *Diagnostic) {
				if d.Severity != SeverityWarning {
					t.Errorf("severity %d", d.Severity)
				}
				msg, _, _ := strings.Cut(d.String(), "\n")
				got = append(got, msg)
			}}
			mustLoad(t, "network n(image: f32[N, 4, 2, 2]) {\n    "+tc.body+"\n}", opts)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}

// TestBuiltinNetworksHaveNoWarnings: the shipped networks follow the naming
// rule without relying on nested parameter-creating calls.
func TestBuiltinNetworksHaveNoWarnings(t *testing.T) {
	for _, name := range archs.Names() {
		var warns []string
		if _, err := LoadFile(name+".kiln", Options{FS: archs.FS, Warn: func(d *Diagnostic) { warns = append(warns, d.String()) }}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(warns) > 0 {
			t.Errorf("%s: %s", name, strings.Join(warns, "\n"))
		}
	}
}

// docNetworks returns the ```kiln code blocks of docs/DSL.md: each is a
// complete network that must load (and, in cmd/kiln, check).
func docNetworks(t *testing.T) []string {
	t.Helper()
	src, err := os.ReadFile("../docs/DSL.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?s)```kiln\n(.*?)```")
	var out []string
	for _, m := range re.FindAllStringSubmatch(string(src), -1) {
		out = append(out, m[1])
	}
	if len(out) == 0 {
		t.Fatal("no ```kiln blocks in docs/DSL.md")
	}
	return out
}

// TestDocNetworks loads every complete network of docs/DSL.md without
// errors or warnings; the ResNet example's names are torchvision's.
func TestDocNetworks(t *testing.T) {
	for i, src := range docNetworks(t) {
		var warns []string
		g, err := Load("DSL.md", []byte(src), Options{Warn: func(d *Diagnostic) { warns = append(warns, d.String()) }})
		if err != nil {
			t.Fatalf("block %d:\n%v", i, err)
		}
		if len(warns) > 0 {
			t.Errorf("block %d: %s", i, strings.Join(warns, "\n"))
		}
		if g.Name != "resnet_cifar" {
			continue
		}
		keys := map[string]bool{}
		for _, p := range g.Params() {
			keys[p.Name] = true
		}
		for _, k := range []string{"conv1.weight", "layer1.1.bn2.running_var", "layer2.0.downsample.0.weight", "layer3.0.downsample.1.bias", "fc.weight"} {
			if !keys[k] {
				t.Errorf("resnet_cifar has no parameter %s", k)
			}
		}
		if keys["layer1.0.downsample.0.weight"] || keys["layer2.1.downsample.0.weight"] {
			t.Error("projection shortcut where stride is 1 and the width is unchanged")
		}
		if got := g.Nodes[g.Outputs[0]].Type.Shape; !ir.ShapeEqual(got, []int{1, 10}) {
			t.Errorf("output shape %v", got)
		}
	}
}
