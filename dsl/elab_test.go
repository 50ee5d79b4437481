package dsl

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"

	"github.com/kiln-dev/kiln/ir"
)

// paramList returns "name shape" for every param node, in graph order.
func paramList(g *ir.Graph) []string {
	var out []string
	for _, n := range g.Params() {
		s := n.Name + " " + ir.ShapeString(n.Type.Shape)
		if n.Attrs.Bool("buffer") {
			s += " buffer"
		}
		out = append(out, s)
	}
	return out
}

func markList(g *ir.Graph) []string {
	var out []string
	for _, m := range g.Marks {
		out = append(out, m.Name+" "+ir.ShapeString(g.Nodes[m.Node].Type.Shape))
	}
	return out
}

func mustLoad(t *testing.T, src string, opts Options) *ir.Graph {
	t.Helper()
	g, err := Load("test.kiln", []byte(src), opts)
	if err != nil {
		t.Fatalf("Load:\n%v", err)
	}
	return g
}

const lib = `
block cb(x, out, k=1, pad=0) {
    conv = conv2d(x, out, k, pad=pad, bias=false)
    bn = batchnorm(conv, eps=0.001)
    return relu(bn)
}
`

func TestNamingAndOrder(t *testing.T) {
	fsys := fstest.MapFS{"lib/cb.kiln": {Data: []byte(lib)}}
	src := `import "lib/cb.kiln"
block unit(x) {
    branch0 = cb(x, 4)
    branch1 = seq { cb(x, 2); cb(_, 4, 3, pad=1) }
    return concat(branch0, branch1)
}
network n(image: f32[N, 3, 8, 8]) {
    stem = seq {
        cb(image, 8)
        repeat 2 unit(_)
        maxpool(_, 2)
    }
    head = conv2d(stem, 5, 1)
    return head
}`
	g, err := Load("test.kiln", []byte(src), Options{FS: fsys})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	cbParams := func(p string, out, in, k int) {
		want = append(want,
			p+".conv.weight "+ir.ShapeString([]int{out, in, k, k}),
			p+".bn.weight "+ir.ShapeString([]int{out}), p+".bn.bias "+ir.ShapeString([]int{out}),
			p+".bn.running_mean "+ir.ShapeString([]int{out})+" buffer", p+".bn.running_var "+ir.ShapeString([]int{out})+" buffer")
	}
	cbParams("stem.0", 8, 3, 1)
	for _, i := range []string{"1", "2"} {
		cbParams("stem."+i+".branch0", 4, 8, 1)
		cbParams("stem."+i+".branch1.0", 2, 8, 1)
		cbParams("stem."+i+".branch1.1", 4, 2, 3)
	}
	want = append(want, "head.weight 5x8x1x1", "head.bias 5")
	if diff := cmp.Diff(want, paramList(g)); diff != "" {
		t.Errorf("params (-want +got):\n%s", diff)
	}
	wantMarks := []string{"head 1x5x4x4", "stem 1x8x4x4", "stem.0 1x8x8x8", "stem.1 1x8x8x8", "stem.2 1x8x8x8", "stem.3 1x8x4x4"}
	if diff := cmp.Diff(wantMarks, markList(g)); diff != "" {
		t.Errorf("marks (-want +got):\n%s", diff)
	}
	// Node names are scope paths and positions point at the making call.
	byName := map[string]*ir.Node{}
	for _, n := range g.Nodes {
		if n.Op != ir.OpParam {
			byName[n.Op+" "+n.Name] = n
		}
	}
	for key, want := range map[string]ir.Pos{
		"relu stem.1.branch1.1": {File: "lib/cb.kiln", Line: 5, Col: 12},
		"concat stem.2":         {File: "test.kiln", Line: 5, Col: 12},
		"conv2d stem.0.conv":    {File: "lib/cb.kiln", Line: 3, Col: 12},
		"maxpool stem.3":        {File: "test.kiln", Line: 11, Col: 9},
		"input image":           {File: "test.kiln", Line: 7, Col: 11},
		"batchnorm stem.0.bn":   {File: "lib/cb.kiln", Line: 4, Col: 10},
		"conv2d head":           {File: "test.kiln", Line: 13, Col: 12},
	} {
		n := byName[key]
		if n == nil {
			t.Errorf("no node %q", key)
			continue
		}
		if n.Pos != want {
			t.Errorf("%s: pos %v, want %v", key, n.Pos, want)
		}
	}
	if g.Nodes[g.Outputs[0]].Name != "head" {
		t.Errorf("output %q", g.Nodes[g.Outputs[0]].Name)
	}
}

func TestNestedAndUnassignedScopes(t *testing.T) {
	src := `block twice(x) {
    y = relu(conv2d(x, 4, 1))
    return dense(flatten(y), 3)
}
network n(image: f32[N, 2, 4, 4]) {
    out = twice(image)
    return out
}`
	// conv2d is nested inside relu's arguments, so it takes the block scope
	// "out" (not "out.y"); dense, unassigned in the return, takes it too: the
	// two clash.
	_, err := Load("test.kiln", []byte(src), Options{})
	if err == nil || !strings.Contains(err.Error(), "duplicate parameter out.weight (first created at test.kiln:2:14)") {
		t.Fatalf("want a duplicate parameter error, got %v", err)
	}
	g := mustLoad(t, strings.Replace(src, "return dense(flatten(y), 3)", "z = dense(flatten(y), 3)\n    return z", 1), Options{})
	want := []string{"out.weight 4x2x1x1", "out.bias 4", "out.z.weight 3x64", "out.z.bias 3"}
	if diff := cmp.Diff(want, paramList(g)); diff != "" {
		t.Errorf("params (-want +got):\n%s", diff)
	}
	for _, n := range g.Nodes {
		if n.Op == ir.OpFlatten && n.Name != "out" {
			t.Errorf("nested flatten named %q, want the block scope", n.Name)
		}
	}
}

func TestExpressions(t *testing.T) {
	src := `network n(image: f32[N, 4, 6, 6], base=2) {
    w = conv2d(image, base * 3 + 2, 3 - 1 * 2, bias=false)
    a = 0.5 * w
    b = w * 2
    c = w / 4
    d = -w
    e = a + b
    unused = conv2d(image, 8, 1) if base > 100 else e
    return e if true else conv2d(image, 8, 1)
}`
	// "base > 100" folds to false: only the else branch is elaborated.
	g := mustLoad(t, src, Options{})
	if diff := cmp.Diff([]string{"w.weight 8x4x1x1"}, paramList(g)); diff != "" {
		t.Errorf("params (-want +got):\n%s", diff)
	}
	cs := map[string]float64{}
	for _, n := range g.Nodes {
		if n.Op == ir.OpMul {
			cs[n.Name] = n.Attrs.Float("c")
		}
	}
	if diff := cmp.Diff(map[string]float64{"a": 0.5, "b": 2, "c": 0.25, "d": -1}, cs); diff != "" {
		t.Errorf("mul constants (-want +got):\n%s", diff)
	}
	out := g.Nodes[g.Outputs[0]]
	if out.Op != ir.OpAdd || out.Name != "e" {
		t.Errorf("output %s %s", out.Op, out.Name)
	}
}

func TestWindowArguments(t *testing.T) {
	src := `network n(image: f32[N, 2, 9, 9]) {
    a = conv2d(image, 4, 1x3, stride=(2, 1), pad=(0, 1), groups=2)
    b = maxpool(a, 3)
    c = avgpool(a, (3, 1), stride=1, pad=(1, 0), count_include_pad=false)
    return concat(c, c, axis=1)
}`
	g := mustLoad(t, src, Options{})
	got := map[string]string{}
	for _, n := range g.Nodes {
		switch n.Op {
		case ir.OpConv2D, ir.OpMaxPool, ir.OpAvgPool, ir.OpConcat:
			got[n.Op] = n.Type.String()
		}
	}
	want := map[string]string{"conv2d": "f32[1,4,5,9]", "maxpool": "f32[1,4,1,3]", "avgpool": "f32[1,4,5,9]", "concat": "f32[1,8,5,9]"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	for _, n := range g.Nodes {
		if n.Op == ir.OpMaxPool && !ir.ShapeEqual(n.Attrs.Ints("stride"), []int{3, 3}) {
			t.Errorf("maxpool stride defaults to kernel, got %v", n.Attrs.Ints("stride"))
		}
		if n.Op == ir.OpAvgPool && n.Attrs.Bool("count_include_pad") {
			t.Error("count_include_pad not passed")
		}
		if n.Op == ir.OpConv2D && n.Attrs.Int("groups") != 2 {
			t.Error("groups not passed")
		}
	}
	if diff := cmp.Diff([]string{"a.weight 4x1x1x3", "a.bias 4"}, paramList(g)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestOptions(t *testing.T) {
	src := `network n(image: f32[N, 3, 8, 8], mask: f32[N, 1]) -> f32[N, 3] {
    return dense(flatten(global_avgpool(image)), 3)
}`
	g := mustLoad(t, src, Options{Batch: 4, InputShape: []int{3, 20, 10}})
	in := g.Inputs()
	if len(in) != 2 || !ir.ShapeEqual(in[0].Type.Shape, []int{4, 3, 20, 10}) || !ir.ShapeEqual(in[1].Type.Shape, []int{4, 1}) {
		t.Errorf("inputs %v %v", in[0].Type, in[1].Type)
	}
	if s := g.Nodes[g.Outputs[0]].Type.Shape; !ir.ShapeEqual(s, []int{4, 3}) {
		t.Errorf("output %v", s)
	}
	_, err := Load("test.kiln", []byte(src), Options{InputShape: []int{3, 8}})
	if err == nil || !strings.Contains(err.Error(), "input shape option [3 8] has 2 dimensions") {
		t.Errorf("got %v", err)
	}
}

func TestDefaultsSeeEarlierParameters(t *testing.T) {
	src := `block b(x, width, double=width * 2) { return conv2d(x, double, 1) }
network n(image: f32[N, 3, 4, 4]) { y = b(image, 5); return y }`
	g := mustLoad(t, src, Options{})
	if diff := cmp.Diff([]string{"y.weight 10x3x1x1", "y.bias 10"}, paramList(g)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestRepeatMarksAndChaining(t *testing.T) {
	src := `block r(x, c) { return relu(x) }
network n(image: f32[N, 3, 4, 4]) {
    repeat = repeat 3 r(image, c=1)
    return repeat
}`
	g := mustLoad(t, src, Options{})
	want := []string{"repeat 1x3x4x4", "repeat.0 1x3x4x4", "repeat.1 1x3x4x4", "repeat.2 1x3x4x4"}
	if diff := cmp.Diff(want, markList(g)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	// Each iteration reads the previous one.
	var relus []*ir.Node
	for _, n := range g.Nodes {
		if n.Op == ir.OpReLU {
			relus = append(relus, n)
		}
	}
	for i := 1; i < len(relus); i++ {
		if g.Nodes[relus[i].Args[0]] != relus[i-1] {
			t.Errorf("iteration %d does not chain", i)
		}
	}
}

// TestImports loads from disk: an import beside the file, and a library name
// that falls back to the built-in archs library.
func TestImports(t *testing.T) {
	dir := t.TempDir()
	write := func(name, src string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("local.kiln", lib)
	write("net.kiln", `import "local.kiln"
import "blocks"
network n(image: f32[N, 3, 8, 8]) {
    a = cb(image, 4)
    b = conv_bn(a, 4, 3)
    return b
}`)
	g, err := LoadFile(filepath.Join(dir, "net.kiln"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(g.Params()); n != 10 {
		t.Errorf("%d params", n)
	}
	if _, err := LoadFile(filepath.Join(dir, "missing.kiln"), Options{}); err == nil {
		t.Error("missing file accepted")
	}
}

func TestDiagnosticsSorted(t *testing.T) {
	src := "network n(image: f32[N, 3, 8, 8]) {\n    b = relu(y)\n    a = relu(x)\n    return a\n}\nblock z(q) { return w }\n"
	_, err := Load("s.kiln", []byte(src), Options{})
	ds, ok := err.(Diagnostics)
	if !ok || len(ds) != 3 {
		t.Fatalf("got %v", err)
	}
	for i, line := range []int{2, 3, 6} {
		if ds[i].Pos.Line != line {
			t.Errorf("diagnostic %d at line %d, want %d", i, ds[i].Pos.Line, line)
		}
	}
}

func TestLimits(t *testing.T) {
	src := `block b(x) { return repeat 50 relu(x) }
network n(image: f32[N, 3, 4, 4]) { return repeat 50 b(image) }`
	_, err := Load("l.kiln", []byte(src), Options{Limits: Limits{MaxNodes: 1000}})
	if err == nil || !strings.Contains(err.Error(), "exceeds the limit of 1000 nodes") {
		t.Errorf("got %v", err)
	}
	_, err = Load("l.kiln", []byte(src), Options{Limits: Limits{MaxSteps: 500}})
	if err == nil || !strings.Contains(err.Error(), "more than 500 steps") {
		t.Errorf("got %v", err)
	}
	if _, err := Load("l.kiln", []byte(src), Options{}); err != nil {
		t.Errorf("default limits: %v", err)
	}
}

// TestDesignExample elaborates the example of the language design (block35
// with a local conv_bn) and checks its names.
func TestDesignExample(t *testing.T) {
	src := `# comment to end of line
block conv_bn(x, out, k, stride=1, pad=0) {      # parameters with defaults
    conv = conv2d(x, out, kernel=k, stride=stride, pad=pad, bias=false)
    bn   = batchnorm(conv, eps=0.001)
    return relu(bn)
}

block block35(x, scale=0.17, activate=true) {
    branch0 = conv_bn(x, 32, 1)
    branch1 = seq { conv_bn(x, 32, 1); conv_bn(_, 32, 3, pad=1) }         # children branch1.0, branch1.1
    branch2 = seq {
        conv_bn(x, 32, 1)
        conv_bn(_, 48, 3x3, pad=1)
        conv_bn(_, 64, (3, 3), pad=(1, 1))
    }
    conv2d = conv2d(concat(branch0, branch1, branch2), 320, kernel=1)
    y = x + scale * conv2d
    return relu(y) if activate else y
}

network net(image: f32[N, 320, 35, 35]) {
    repeat = repeat 2 block35(image, scale=0.17)
    last = block35(repeat, scale=1.0, activate=false)
    return last
}`
	g := mustLoad(t, src, Options{})
	var convs []string
	for _, p := range g.Params() {
		if strings.HasSuffix(p.Name, "conv.weight") || strings.Contains(p.Name, "conv2d.") {
			convs = append(convs, p.Name+" "+ir.ShapeString(p.Type.Shape))
		}
	}
	var want []string
	for _, b := range []string{"repeat.0", "repeat.1", "last"} {
		want = append(want,
			b+".branch0.conv.weight 32x320x1x1",
			b+".branch1.0.conv.weight 32x320x1x1", b+".branch1.1.conv.weight 32x32x3x3",
			b+".branch2.0.conv.weight 32x320x1x1", b+".branch2.1.conv.weight 48x32x3x3",
			b+".branch2.2.conv.weight 64x48x3x3",
			b+".conv2d.weight 320x128x1x1", b+".conv2d.bias 320")
	}
	if diff := cmp.Diff(want, convs); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	out := g.Nodes[g.Outputs[0]]
	if out.Op != ir.OpAdd || out.Name != "last.y" {
		t.Errorf("output %s %q: the final block must end with the add (no ReLU)", out.Op, out.Name)
	}
	if r, _ := g.Mark("repeat.1"); g.Nodes[r].Op != ir.OpReLU || g.Nodes[r].Name != "repeat.1" {
		t.Errorf("repeat.1 is %s %q", g.Nodes[r].Op, g.Nodes[r].Name)
	}
}
