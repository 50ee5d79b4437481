package dsl

import (
	"testing"

	"github.com/alecthomas/participle/v2/lexer"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// AST builders for the expected trees (positions are ignored by the
// comparison, except in TestParsePositions).
func id(n string) *Ident                { return &Ident{Name: n} }
func num(i int) *Number                 { return &Number{IsInt: true, Int: i, Float: float64(i)} }
func flt(f float64) *Number             { return &Number{Float: f} }
func bin(op string, x, y Expr) *Binary  { return &Binary{Op: op, X: x, Y: y} }
func call(f string, args ...*Arg) *Call { return &Call{Func: f, Args: args} }
func pos(x Expr) *Arg                   { return &Arg{Value: x} }
func kw(n string, x Expr) *Arg          { return &Arg{Name: n, Value: x} }
func ret(x Expr) *Return                { return &Return{Value: x} }
func set(n string, x Expr) *Assign      { return &Assign{Name: n, Value: x} }

var astOpts = []cmp.Option{
	cmpopts.IgnoreTypes(lexer.Position{}),
	cmpopts.IgnoreFields(File{}, "Name", "Src"),
	cmpopts.IgnoreUnexported(File{}),
	cmpopts.EquateEmpty(),
}

func TestParseValid(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want *File
	}{
		{
			name: "import and block with defaults",
			src: `# comment
import "blocks.kiln"   # trailing comment
block conv_bn(x, out, k, stride=1, pad=0) {
    conv = conv2d(x, out, kernel=k, stride=stride, pad=pad, bias=false)
    return relu(conv)
}
`,
			want: &File{
				Imports: []*Import{{Path: "blocks.kiln"}},
				Blocks: []*Block{{Name: "conv_bn",
					Params: []*Param{{Name: "x"}, {Name: "out"}, {Name: "k"}, {Name: "stride", Default: num(1)}, {Name: "pad", Default: num(0)}},
					Body: []Stmt{
						set("conv", call("conv2d", pos(id("x")), pos(id("out")), kw("kernel", id("k")), kw("stride", id("stride")),
							kw("pad", id("pad")), kw("bias", &Bool{Value: false}))),
						ret(call("relu", pos(id("conv")))),
					}}},
			},
		},
		{
			name: "precedence and unary minus",
			src:  `block f(a, b, c, d) { return a + b * c - --d / 2.5 }`,
			want: &File{Blocks: []*Block{{Name: "f",
				Params: []*Param{{Name: "a"}, {Name: "b"}, {Name: "c"}, {Name: "d"}},
				Body: []Stmt{ret(bin("-", bin("+", id("a"), bin("*", id("b"), id("c"))),
					bin("/", &Unary{Op: "-", X: &Unary{Op: "-", X: id("d")}}, flt(2.5))))}}}},
		},
		{
			name: "conditional chains to the right",
			src:  `block f(x, p, q) { return relu(x) if p else x if q else (x) }`,
			want: &File{Blocks: []*Block{{Name: "f",
				Params: []*Param{{Name: "x"}, {Name: "p"}, {Name: "q"}},
				Body: []Stmt{ret(&Cond{Then: call("relu", pos(id("x"))), Cond: id("p"),
					Else: &Cond{Then: id("x"), Cond: id("q"), Else: id("x")}})}}}},
		},
		{
			name: "kernel sizes, tuples and trailing commas",
			src: `block f(x,) {
    return conv2d(x, 8, 1x7, pad=(0, 3), stride=(2,), groups=1e0,)
}`,
			want: &File{Blocks: []*Block{{Name: "f", Params: []*Param{{Name: "x"}},
				Body: []Stmt{ret(call("conv2d", pos(id("x")), pos(num(8)), pos(&KernelLit{H: 1, W: 7}),
					kw("pad", &Tuple{Elems: []Expr{num(0), num(3)}}), kw("stride", &Tuple{Elems: []Expr{num(2)}}),
					kw("groups", flt(1))))}}}},
		},
		{
			name: "seq items, placeholder and repeat",
			src: `network n(image: f32[N, 3, 32, 32]) -> f32[N, 10] {
    features = seq { relu(image); relu(_)
        repeat 3 relu(_)

        maxpool(_, 3, stride=2)
    }
    repeat = repeat 2 relu(features)
    y = relu(repeat)
    return y
}`,
			want: &File{Network: &Block{Network: true, Name: "n",
				Params: []*Param{{Name: "image", Type: &TensorType{DType: "f32",
					Dims: []*Dim{{Name: "N"}, {Size: 3}, {Size: 32}, {Size: 32}}}}},
				Result: &TensorType{DType: "f32", Dims: []*Dim{{Name: "N"}, {Size: 10}}},
				Body: []Stmt{
					set("features", &Seq{Items: []Expr{
						call("relu", pos(id("image"))),
						call("relu", pos(&Placeholder{})),
						&Repeat{Count: num(3), Call: call("relu", pos(&Placeholder{}))},
						call("maxpool", pos(&Placeholder{}), pos(num(3)), kw("stride", num(2))),
					}}),
					set("repeat", &Repeat{Count: num(2), Call: call("relu", pos(id("features")))}),
					set("y", call("relu", pos(id("repeat")))),
					ret(id("y")),
				}}},
		},
		{
			name: "newlines inside brackets and after operators",
			src: `block f(x,
        scale=0.5) {
    y = x +
        scale * x
    z = concat(
        x,
        seq {
            relu(y)
            relu(_)
        },
    )
    return z
}`,
			want: &File{Blocks: []*Block{{Name: "f", Params: []*Param{{Name: "x"}, {Name: "scale", Default: flt(0.5)}},
				Body: []Stmt{
					set("y", bin("+", id("x"), bin("*", id("scale"), id("x")))),
					set("z", call("concat", pos(id("x")), pos(&Seq{Items: []Expr{call("relu", pos(id("y"))), call("relu", pos(&Placeholder{}))}}))),
					ret(id("z")),
				}}}},
		},
		{
			name: "expression statement, strings and bools",
			src:  "block f(x) { relu(x); return x if true else \"s\\n\" }",
			want: &File{Blocks: []*Block{{Name: "f", Params: []*Param{{Name: "x"}},
				Body: []Stmt{&ExprStmt{X: call("relu", pos(id("x")))},
					ret(&Cond{Then: id("x"), Cond: &Bool{Value: true}, Else: &String{Value: "s\n"}})}}}},
		},
		{
			name: "empty file",
			src:  "\n# nothing\n\n",
			want: &File{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := ParseFile("test.kiln", []byte(tt.src))
			if err != nil {
				t.Fatalf("ParseFile: %v", err)
			}
			if diff := cmp.Diff(tt.want, f, astOpts...); diff != "" {
				t.Errorf("AST mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParsePositions(t *testing.T) {
	src := "block f(x) {\n    y = x +  relu(x)\n    return y\n}\n"
	f, err := ParseFile("p.kiln", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	b := f.Blocks[0]
	at := func(p lexer.Position) [2]int { return [2]int{p.Line, p.Column} }
	got := map[string][2]int{
		"block":  at(b.Pos),
		"assign": at(b.Body[0].(*Assign).Pos),
		"plus":   at(b.Body[0].(*Assign).Value.(*Binary).Pos),
		"call":   at(b.Body[0].(*Assign).Value.(*Binary).Y.Position()),
		"arg":    at(b.Body[0].(*Assign).Value.(*Binary).Y.(*Call).Args[0].Pos),
		"return": at(b.Body[1].(*Return).Pos),
		"end":    at(b.End),
	}
	want := map[string][2]int{"block": {1, 7}, "assign": {2, 5}, "plus": {2, 11}, "call": {2, 14},
		"arg": {2, 19}, "return": {3, 5}, "end": {4, 1}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("positions (-want +got):\n%s", diff)
	}
	if b.Pos.Filename != "p.kiln" {
		t.Errorf("filename %q", b.Pos.Filename)
	}
}

// TestParseErrorsCollected checks that ParseFile reports errors from
// different declarations together and still returns the good ones.
func TestParseErrorsCollected(t *testing.T) {
	src := "block a(x) { return x\nblock b(x) { return x }\nblock c(x) { return x + }\nnetwork n(i: f32[N, 1]) { return b(i) }\n"
	f, err := ParseFile("e.kiln", []byte(src))
	ds, ok := err.(Diagnostics)
	if !ok || len(ds) != 2 {
		t.Fatalf("want 2 diagnostics, got %T %v", err, err)
	}
	if ds[0].Pos.Line != 1 || ds[1].Pos.Line != 3 { // the first at the end of block a
		t.Errorf("positions %v, %v", ds[0].Pos, ds[1].Pos)
	}
	if len(f.Blocks) != 1 || f.Blocks[0].Name != "b" || f.Network == nil {
		t.Errorf("good declarations not kept: %+v", f)
	}
}

func TestCaretAlignment(t *testing.T) {
	d := &Diagnostic{Pos: irPos(lexer.Position{Filename: "f", Line: 1, Column: 4}), Msg: "m", Line: "\tab c"}
	want := "f:1:4: m\n\tab c\n\t  ^"
	if got := d.String(); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
