package archs_test

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/fixtures"
	"github.com/kiln-dev/kiln/ir"
)

func load(t *testing.T, name string, opts dsl.Options) *ir.Graph {
	t.Helper()
	opts.FS = archs.FS
	g, err := dsl.LoadFile(name+".kiln", opts)
	if err != nil {
		t.Fatalf("%s:\n%v", name, err)
	}
	if err := g.Verify(); err != nil {
		t.Fatalf("%s: Verify: %v", name, err)
	}
	return g
}

func TestNames(t *testing.T) {
	want := []string{"inception_resnet_v1", "inception_resnet_v2", "inception_v4", "mini_inception", "mini_inception_resnet", "tiny"}
	if diff := cmp.Diff(want, archs.Names()); diff != "" {
		t.Errorf("Names (-want +got):\n%s", diff)
	}
}

// TestCounts checks learnable parameters, MACs and the output shape at
// 1x3x299x299 against ARCHITECTURES.md sections 2 and 6.
func TestCounts(t *testing.T) {
	tests := []struct {
		name         string
		params, macs int64
		out          []int
	}{
		{name: "inception_v4", params: 42_679_816, macs: 12_253_974_624, out: []int{1, 1000}},
		{name: "inception_resnet_v2", params: 55_843_464, macs: 13_155_794_016, out: []int{1, 1000}},
		{name: "inception_resnet_v1", params: 22_756_328, macs: 6_206_361_696, out: []int{1, 1000}},
		{name: "tiny", params: 10_354, macs: 810_256, out: []int{1, 10}},
		// The training fixtures' networks at their own 1x28x28 input
		// (shared/fixtures/training/README.md section 1).
		{name: "mini_inception", params: 357_002, macs: 27_347_680, out: []int{1, 10}},
		{name: "mini_inception_resnet", params: 316_634, macs: 29_285_728, out: []int{1, 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := load(t, tt.name, dsl.Options{})
			var params, macs int64
			for i, n := range g.Nodes {
				if n.Op == ir.OpParam && !n.Attrs.Bool("buffer") {
					params += int64(n.Type.Numel())
				}
				macs += g.MACs(i)
			}
			if params != tt.params {
				t.Errorf("learnable parameters %d, want %d", params, tt.params)
			}
			if macs != tt.macs {
				t.Errorf("MACs %d, want %d", macs, tt.macs)
			}
			if len(g.Outputs) != 1 || !ir.ShapeEqual(g.Nodes[g.Outputs[0]].Type.Shape, tt.out) {
				t.Errorf("outputs %v", g.Outputs)
			}
			if g.Name != tt.name {
				t.Errorf("graph name %q", g.Name)
			}
		})
	}
}

// readStateDict reads a timm state_dict listing (key, shape) without the
// num_batches_tracked counters, as "key [d0,d1,...]" lines.
func readStateDict(t *testing.T, file string) []string {
	t.Helper()
	f, err := os.Open(fixtures.Path(t, file))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for first := true; sc.Scan(); first = false {
		key, shape, ok := strings.Cut(sc.Text(), "\t")
		if first || !ok || strings.HasSuffix(key, ".num_batches_tracked") {
			continue
		}
		out = append(out, key+" "+shape)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestStateDict checks that the param nodes, in graph order, are exactly
// timm's state_dict keys and shapes, in order; running statistics are
// buffers and everything else is learnable.
func TestStateDict(t *testing.T) {
	for _, name := range []string{"inception_v4", "inception_resnet_v2"} {
		t.Run(name, func(t *testing.T) {
			want := readStateDict(t, "timm_state_dict_"+name+".tsv")
			g := load(t, name, dsl.Options{})
			var got []string
			for _, n := range g.Params() {
				dims := make([]string, len(n.Type.Shape))
				for i, d := range n.Type.Shape {
					dims[i] = strconv.Itoa(d)
				}
				got = append(got, n.Name+" ["+strings.Join(dims, ",")+"]")
				stat := strings.HasSuffix(n.Name, ".running_mean") || strings.HasSuffix(n.Name, ".running_var")
				if n.Attrs.Bool("buffer") != stat {
					t.Errorf("%s: buffer=%v", n.Name, n.Attrs.Bool("buffer"))
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("state_dict (-timm +kiln):\n%s", diff)
			}
		})
	}
}

// TestTrainingStateDict checks the two mini networks against the PyTorch
// state_dict listings of the training fixtures
// (shared/fixtures/training/{inc,res}.state_dict.tsv: name, shape as
// "[32, 1, 3, 3]", param or buffer): keys, shapes and order equal, and the
// buffer attribute set exactly on the rows of kind "buffer".
func TestTrainingStateDict(t *testing.T) {
	for name, fixture := range map[string]string{"mini_inception": "inc", "mini_inception_resnet": "res"} {
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(fixtures.Path(t, "fixtures", "training", fixture+".state_dict.tsv"))
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for i, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
				f := strings.Split(line, "\t")
				if len(f) != 3 {
					t.Fatalf("%s.state_dict.tsv:%d: %d fields, want 3", fixture, i+1, len(f))
				}
				if i > 0 {
					want = append(want, f[0]+" "+strings.ReplaceAll(f[1], " ", "")+" "+f[2])
				}
			}
			g := load(t, name, dsl.Options{})
			var got []string
			for _, n := range g.Params() {
				dims := make([]string, len(n.Type.Shape))
				for i, d := range n.Type.Shape {
					dims[i] = strconv.Itoa(d)
				}
				kind := "param"
				if n.Attrs.Bool("buffer") {
					kind = "buffer"
				}
				got = append(got, n.Name+" ["+strings.Join(dims, ",")+"] "+kind)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("state_dict (-pytorch +kiln):\n%s", diff)
			}
		})
	}
}

// TestFixtureStages checks the marks used to compare stage outputs with the
// timm fixtures (shared/fixtures/README.md section 2) at 2x3x139x139.
func TestFixtureStages(t *testing.T) {
	stages := map[string]map[string][]int{
		"inception_v4": {
			"features.2": {2, 64, 67, 67}, "features.5": {2, 384, 15, 15}, "features.9": {2, 384, 15, 15},
			"features.10": {2, 1024, 7, 7}, "features.17": {2, 1024, 7, 7}, "features.18": {2, 1536, 3, 3},
			"features.21": {2, 1536, 3, 3}, "last_linear": {2, 1000},
		},
		"inception_resnet_v2": {
			"conv2d_4a": {2, 192, 31, 31}, "mixed_5b": {2, 320, 15, 15}, "repeat": {2, 320, 15, 15},
			"mixed_6a": {2, 1088, 7, 7}, "repeat_1": {2, 1088, 7, 7}, "mixed_7a": {2, 2080, 3, 3},
			"block8": {2, 2080, 3, 3}, "conv2d_7b": {2, 1536, 3, 3}, "classif": {2, 1000},
		},
	}
	for name, want := range stages {
		t.Run(name, func(t *testing.T) {
			g := load(t, name, dsl.Options{Batch: 2, InputShape: []int{3, 139, 139}})
			if s := g.Inputs()[0].Type.Shape; !ir.ShapeEqual(s, []int{2, 3, 139, 139}) {
				t.Fatalf("input shape %v", s)
			}
			for mark, shape := range want {
				i, ok := g.Mark(mark)
				if !ok {
					t.Errorf("no mark %s", mark)
					continue
				}
				if s := g.Nodes[i].Type.Shape; !ir.ShapeEqual(s, shape) {
					t.Errorf("%s: shape %v, want %v", mark, s, shape)
				}
			}
			if out, _ := g.Mark(map[string]string{"inception_v4": "last_linear", "inception_resnet_v2": "classif"}[name]); out != g.Outputs[0] {
				t.Errorf("the classifier mark is not the output")
			}
		})
	}
}

// TestBlockShapes checks every mark (every block output) at 299x299
// against the block tables of ARCHITECTURES.md.
func TestBlockShapes(t *testing.T) {
	type stage struct {
		name     string
		from, to int   // numbered children name.from … name.to; -1: just name
		chw      []int // C, H, W (or just C)
	}
	tests := map[string][]stage{
		"inception_v4": {
			{"features", 0, 0, []int{32, 149, 149}}, {"features", 1, 1, []int{32, 147, 147}},
			{"features", 2, 2, []int{64, 147, 147}}, {"features", 3, 3, []int{160, 73, 73}},
			{"features", 4, 4, []int{192, 71, 71}}, {"features", 5, 9, []int{384, 35, 35}},
			{"features", 10, 17, []int{1024, 17, 17}}, {"features", 18, 21, []int{1536, 8, 8}},
			{"features", -1, -1, []int{1536, 8, 8}}, {"last_linear", -1, -1, []int{1000}},
		},
		"inception_resnet_v2": {
			{"conv2d_1a", -1, -1, []int{32, 149, 149}}, {"conv2d_2a", -1, -1, []int{32, 147, 147}},
			{"conv2d_2b", -1, -1, []int{64, 147, 147}}, {"maxpool_3a", -1, -1, []int{64, 73, 73}},
			{"conv2d_3b", -1, -1, []int{80, 73, 73}}, {"conv2d_4a", -1, -1, []int{192, 71, 71}},
			{"maxpool_5a", -1, -1, []int{192, 35, 35}}, {"mixed_5b", -1, -1, []int{320, 35, 35}},
			{"repeat", 0, 9, []int{320, 35, 35}}, {"repeat", -1, -1, []int{320, 35, 35}},
			{"mixed_6a", -1, -1, []int{1088, 17, 17}},
			{"repeat_1", 0, 19, []int{1088, 17, 17}}, {"repeat_1", -1, -1, []int{1088, 17, 17}},
			{"mixed_7a", -1, -1, []int{2080, 8, 8}},
			{"repeat_2", 0, 8, []int{2080, 8, 8}}, {"repeat_2", -1, -1, []int{2080, 8, 8}},
			{"block8", -1, -1, []int{2080, 8, 8}}, {"conv2d_7b", -1, -1, []int{1536, 8, 8}},
			{"classif", -1, -1, []int{1000}},
		},
		"inception_resnet_v1": {
			{"conv2d_1a", -1, -1, []int{32, 149, 149}}, {"conv2d_2a", -1, -1, []int{32, 147, 147}},
			{"conv2d_2b", -1, -1, []int{64, 147, 147}}, {"maxpool_3a", -1, -1, []int{64, 73, 73}},
			{"conv2d_3b", -1, -1, []int{80, 73, 73}}, {"conv2d_4a", -1, -1, []int{192, 71, 71}},
			{"conv2d_4b", -1, -1, []int{256, 35, 35}},
			{"repeat_1", 0, 4, []int{256, 35, 35}}, {"repeat_1", -1, -1, []int{256, 35, 35}},
			{"mixed_6a", -1, -1, []int{896, 17, 17}},
			{"repeat_2", 0, 9, []int{896, 17, 17}}, {"repeat_2", -1, -1, []int{896, 17, 17}},
			{"mixed_7a", -1, -1, []int{1792, 8, 8}},
			{"repeat_3", 0, 4, []int{1792, 8, 8}}, {"repeat_3", -1, -1, []int{1792, 8, 8}},
			{"fc", -1, -1, []int{1000}},
		},
	}
	for name, stages := range tests {
		t.Run(name, func(t *testing.T) {
			g := load(t, name, dsl.Options{})
			want := map[string][]int{}
			for _, s := range stages {
				shape := append([]int{1}, s.chw...)
				if s.from < 0 {
					want[s.name] = shape
				}
				for i := s.from; i >= 0 && i <= s.to; i++ {
					want[s.name+"."+strconv.Itoa(i)] = shape
				}
			}
			got := map[string][]int{}
			for _, m := range g.Marks {
				got[m.Name] = g.Nodes[m.Node].Type.Shape
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("marks (-want +got):\n%s", diff)
			}
		})
	}
}

// TestBlockIO checks the repeated blocks read their predecessor: each
// repeat.i's residual add uses repeat.(i-1) (the block input) directly.
func TestBlockIO(t *testing.T) {
	g := load(t, "inception_resnet_v2", dsl.Options{})
	prev, _ := g.Mark("mixed_5b")
	for i := 0; i < 10; i++ {
		id, _ := g.Mark("repeat." + strconv.Itoa(i))
		relu := g.Nodes[id]
		add := g.Nodes[relu.Args[0]]
		if relu.Op != ir.OpReLU || add.Op != ir.OpAdd || add.Args[0] != prev {
			t.Fatalf("repeat.%d: %s(%s) does not add its input", i, relu.Op, add.Op)
		}
		mul := g.Nodes[add.Args[1]]
		if mul.Op != ir.OpMul || mul.Attrs.Float("c") != 0.17 {
			t.Errorf("repeat.%d: scale %v", i, mul.Attrs)
		}
		prev = id
	}
	b8, _ := g.Mark("block8")
	if n := g.Nodes[b8]; n.Op != ir.OpAdd || g.Nodes[n.Args[1]].Attrs.Float("c") != 1.0 {
		t.Errorf("final block8 must end with the unscaled add (no ReLU), got %s", n.Op)
	}
	// Every avgpool inside blocks excludes padding.
	for _, n := range g.Nodes {
		if n.Op == ir.OpAvgPool && n.Attrs.Bool("count_include_pad") {
			t.Errorf("%s: count_include_pad", n.Name)
		}
	}
}
