package ir

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseLayout(t *testing.T) {
	cases := []struct {
		text string
		want Layout
		err  string
	}{
		{"", Plain, ""},
		{"NCHW16c", NCHWc(16), ""},
		{"NCHW8c", NCHWc(8), ""},
		{"OIhw16i16o", OIhwIiOo(16), ""},
		{"OIhw4i4o", OIhwIiOo(4), ""},
		{"NHWC", Layout{}, `unknown layout "NHWC"`},
		{"NCHW0c", Layout{}, `unknown layout "NCHW0c"`},
		{"NCHW016c", Layout{}, `unknown layout "NCHW016c"`},
		{"NCHWc", Layout{}, `unknown layout "NCHWc"`},
		{"OIhw16i8o", Layout{}, `layout "OIhw16i8o": input and output blocks differ (16, 8)`},
		{"OIhw16i16", Layout{}, `unknown layout "OIhw16i16"`},
	}
	for _, c := range cases {
		got, err := ParseLayout(c.text)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseLayout(%q) = %v, %v; want error %q", c.text, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseLayout(%q) = %v, %v; want %v", c.text, got, err, c.want)
		}
		if got.String() != c.text {
			t.Errorf("%q prints as %q", c.text, got.String())
		}
	}
}

// TestLayoutOffset checks Offset against the definition of each layout: the
// row-major index of the physical shape ([N][C/B][H][W][C%B],
// [O/B][I/B][kh][kw][I%B][O%B]), that it is a bijection of the logical
// elements into PhysicalNumel, and that ActivationStrides with the plain
// layout agree with row-major order.
func TestLayoutOffset(t *testing.T) {
	rowMajor := func(shape, idx []int) int {
		o := 0
		for k, d := range shape {
			o = o*d + idx[k]
		}
		return o
	}
	cases := []struct {
		l     Layout
		shape []int
		phys  func(idx []int) []int
	}{
		{Plain, []int{2, 5, 3, 4}, func(i []int) []int { return i }},
		{NCHWc(4), []int{2, 5, 3, 4}, func(i []int) []int { return []int{i[0], i[1] / 4, i[2], i[3], i[1] % 4} }},
		{NCHWc(16), []int{1, 3, 2, 2}, func(i []int) []int { return []int{i[0], i[1] / 16, i[2], i[3], i[1] % 16} }},
		{OIhwIiOo(4), []int{9, 6, 3, 2}, func(i []int) []int { return []int{i[0] / 4, i[1] / 4, i[2], i[3], i[1] % 4, i[0] % 4} }},
	}
	for _, c := range cases {
		ps, err := c.l.PhysicalShape(c.shape)
		if err != nil {
			t.Fatal(err)
		}
		numel, _ := c.l.PhysicalNumel(c.shape)
		seen := map[int]bool{}
		idx := make([]int, 4)
		for idx[0] = 0; idx[0] < c.shape[0]; idx[0]++ {
			for idx[1] = 0; idx[1] < c.shape[1]; idx[1]++ {
				for idx[2] = 0; idx[2] < c.shape[2]; idx[2]++ {
					for idx[3] = 0; idx[3] < c.shape[3]; idx[3]++ {
						got := c.l.Offset(c.shape, idx...)
						if want := rowMajor(ps, c.phys(idx)); got != want {
							t.Fatalf("%s %v: Offset%v = %d, want %d", c.l, c.shape, idx, got, want)
						}
						if got < 0 || got >= numel || seen[got] {
							t.Fatalf("%s %v: Offset%v = %d out of range or repeated", c.l, c.shape, idx, got)
						}
						seen[got] = true
						if c.l.Kind != LayoutOIhwIiOo {
							s := c.l.ActivationStrides(c.shape, 4)
							if o := idx[0]*s.N + idx[1]/4*s.Block + idx[1]%4*s.Channel + idx[2]*s.Row + idx[3]*s.Pixel; c.l.Block <= 4 && o != got {
								t.Fatalf("%s: strides give %d for %v, Offset %d", c.l, o, idx, got)
							}
						}
					}
				}
			}
		}
	}
	if _, err := NCHWc(8).PhysicalShape([]int{4}); err == nil {
		t.Error("NCHW8c applied to a vector")
	}
	if err := (Layout{Kind: LayoutNCHWc}).Valid(); err == nil {
		t.Error("NCHWc without a block is valid")
	}
}

func TestDTypeSize(t *testing.T) {
	for d, want := range map[DType]int{F32: 4, BF16: 2, F16: 2, I8: 1, 0: 0, 99: 0} {
		if got := d.Size(); got != want {
			t.Errorf("%s.Size() = %d, want %d", d, got, want)
		}
	}
}

// TestRoundTripDTypes prints and parses graphs of bf16, f16 and i8 values
// (no kernels exist for them, but they plan, print and parse), including a
// blocked bf16 value.
func TestRoundTripDTypes(t *testing.T) {
	for _, dt := range []DType{BF16, F16, I8} {
		g := &Graph{Name: "dt"}
		x := g.MustAdd(&Node{Op: OpInput, Name: "x", Type: Type{DType: dt, Shape: []int{1, 20, 4, 4}}})
		r := g.MustAdd(&Node{Op: OpReorder, Args: []int{x}, Attrs: Attrs{"layout": "NCHW16c"}})
		p := g.MustAdd(&Node{Op: OpMaxPool, Args: []int{r}, Attrs: Attrs{"kernel": []int{2, 2}}})
		back := g.MustAdd(&Node{Op: OpReorder, Args: []int{p}})
		g.Outputs = []int{g.MustAdd(&Node{Op: OpFlatten, Args: []int{back}})}
		if got := g.Nodes[p].Type; got.DType != dt || got.Layout != NCHWc(16) {
			t.Fatalf("maxpool result %s, want %s@NCHW16c", got, dt)
		}
		text := g.String()
		if !strings.Contains(text, dt.String()+"[1,20,3,3]@NCHW16c") {
			t.Fatalf("printed IR lacks the %s value:\n%s", dt, text)
		}
		parsed, err := Parse("dt.ir", text)
		if err != nil {
			t.Fatalf("%s: %v\n%s", dt, err, text)
		}
		if d := cmp.Diff(g, parsed); d != "" {
			t.Fatalf("%s round trip differs (-want +got):\n%s", dt, d)
		}
	}
}

// TestDTypeRules checks the dtype rules of the op table: operands share one
// dtype, the result's dtype is inferred (never defaulted to f32), and
// arithmetic ops refuse i8.
func TestDTypeRules(t *testing.T) {
	in := func(g *Graph, name string, dt DType) int {
		return g.MustAdd(&Node{Op: OpInput, Name: name, Type: Type{DType: dt, Shape: []int{1, 4, 2, 2}}, Pos: Pos{File: "d.kiln", Line: 1, Col: 1}})
	}
	pos := Pos{File: "d.kiln", Line: 7, Col: 2}
	cases := []struct {
		name  string
		build func(g *Graph) *Node
		want  string
	}{
		{"add mixes f32 and bf16", func(g *Graph) *Node {
			return &Node{Op: OpAdd, Args: []int{in(g, "a", F32), in(g, "b", BF16)}, Pos: pos}
		}, "d.kiln:7:2: %2 add: y (operand 1, %1) has dtype bf16, the result f32: operands must share one dtype"},
		{"concat mixes f16 and f32", func(g *Graph) *Node {
			return &Node{Op: OpConcat, Args: []int{in(g, "a", F16), in(g, "b", F32)}, Pos: pos}
		}, "d.kiln:7:2: %2 concat: xs (operand 1, %1) has dtype f32, the result f16: operands must share one dtype"},
		{"relu of i8", func(g *Graph) *Node {
			return &Node{Op: OpReLU, Args: []int{in(g, "a", I8)}, Pos: pos}
		}, "d.kiln:7:2: %1 relu: dtype i8 not accepted (want f32, bf16, f16)"},
		{"input without dtype", func(g *Graph) *Node {
			return &Node{Op: OpInput, Name: "x", Type: Type{Shape: []int{2}}, Pos: pos}
		}, "d.kiln:7:2: %0 input: result has no valid dtype (dtype(0)); inputs and params must declare one"},
		{"add of two layouts", func(g *Graph) *Node {
			a := in(g, "a", F32)
			b := g.MustAdd(&Node{Op: OpReorder, Args: []int{in(g, "b", F32)}, Attrs: Attrs{"layout": "NCHW8c"}})
			return &Node{Op: OpAdd, Args: []int{a, b}, Type: Type{Layout: NCHWc(8)}, Pos: pos}
		}, "d.kiln:7:2: %3 add: x (operand 0, %0) has layout plain, want NCHW8c (the result's)"},
	}
	for _, c := range cases {
		g := &Graph{Name: "d"}
		_, err := g.Add(c.build(g))
		if err == nil || err.Error() != c.want {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
	// A bf16 chain infers bf16 throughout.
	g := &Graph{Name: "d"}
	r := g.MustAdd(&Node{Op: OpReLU, Args: []int{in(g, "a", BF16)}})
	if dt := g.Nodes[r].Type.DType; dt != BF16 {
		t.Errorf("relu of bf16 inferred %s", dt)
	}
}
