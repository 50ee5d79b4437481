// Package optable derives the "what compiles on which target" table of
// docs/DSL.md from the code: for every DSL spelling of an op (a builtin or
// an operator) it elaborates a small probe network, runs the inference
// pipeline for every single-ISA build target of the target table and the
// build's legality check (lower.Check, what `kiln check --target` and
// `kiln build` run), and records what happened to the probed node.
//
// Nothing in the table is typed in: a cell says "kernel" when the probed
// op is a run-time node after the pipeline and the check passes, "fused"
// (or "folded", "in place") when the op applied to a convolution's result
// disappeared into the convolution, "view" when no kernel runs because the
// planner aliased the result with its operand (flatten, reshape, dropout at
// inference), "none" when the op left the run-time graph otherwise, and "✗"
// with the refusal as a footnote when the pipeline or the check refuses it.
// A target the table marks not implemented (the GPUs) gets "—" and its
// reason. `go generate ./internal/optable` rewrites the table in
// docs/DSL.md; TestDSLDocTable fails when the file is out of date.
package optable

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/codegen/lower"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/passes"
	"github.com/kiln-dev/kiln/target"
)

// Probe exercises one DSL spelling of an op.
type Probe struct {
	// Spelling is the DSL form shown in the table: a builtin name (the
	// table shows its parameter list from dsl.BuiltinSignature) or an
	// operator expression ("x + y").
	Spelling string
	// Builtin is the builtin the probe calls ("" for operators).
	Builtin string
	// Op is the IR op the spelling creates.
	Op string
	// As are the ops the pipeline rewrites Op into while it still computes
	// the same function as a kernel of its own (conv2d becomes fused_conv).
	As []string
	// Note qualifies the row ("groups=4", "depthwise").
	Note string
	// Expr is the probed expression over x, a blocked [N, 16, 8, 8] value
	// (a max-pooling result, so that nothing can fuse into its producer).
	Expr string
	// Fused, when set, is the expression applied to c, a convolution's
	// result, where the rewriting passes may absorb the op into the
	// convolution; FusedWord names what they do ("fused", "folded", "in
	// place").
	Fused, FusedWord string
}

// probeSource is the network a probe's expressions are placed in: line 5
// holds the probed expression, so the probed nodes are recognised by their
// source line. Each expression is assigned to a name of its own, so that
// a parameter-creating call nested in it is named under that name.
const probeSource = `block probe(image) {
    stem = conv2d(image, 16, 3, pad=1)
    x = maxpool(relu(stem), 3, stride=1, pad=1)
    c = conv2d(x, 16, 3, pad=1)
    probe = %s
    return probe
}
network probe(image: f32[N, 3, 8, 8]) {
    return probe(image)
}
`

// probeLine is the source line of the probed expression in probeSource.
const probeLine = 5

// convAs: every convolution runs as a fused_conv (with or without an
// epilogue).
var convAs = []string{ir.OpFusedConv}

// gap is x's global average: an SE-style [N, 16, 1, 1] scale.
const gap = "sigmoid(global_avgpool(x))"

// Probes lists a probe for every builtin of the DSL that creates an op
// (TestProbesCoverBuiltins checks that none is missing) and for the
// operators, in the order of docs/DSL.md's builtin list.
var Probes = []Probe{
	{Spelling: "conv2d", Builtin: "conv2d", Op: ir.OpConv2D, As: convAs, Expr: "conv2d(x, 16, 3, pad=1)"},
	{Spelling: "conv2d", Builtin: "conv2d", Op: ir.OpConv2D, As: convAs, Note: "stride=2, 1x1", Expr: "conv2d(x, 32, 1, stride=2)"},
	{Spelling: "conv2d", Builtin: "conv2d", Op: ir.OpConv2D, As: convAs, Note: "dilation=2", Expr: "conv2d(x, 16, 3, pad=2, dilation=2)"},
	{Spelling: "conv2d", Builtin: "conv2d", Op: ir.OpConv2D, As: convAs, Note: "groups=16 (depthwise)", Expr: "conv2d(x, 16, 3, pad=1, groups=16)"},
	{Spelling: "conv2d", Builtin: "conv2d", Op: ir.OpConv2D, As: convAs, Note: "groups=2 (8 channels per group)", Expr: "conv2d(x, 16, 3, pad=1, groups=2)"},
	{Spelling: "conv2d", Builtin: "conv2d", Op: ir.OpConv2D, As: convAs, Note: "groups=4 (4 channels per group)", Expr: "conv2d(x, 16, 3, pad=1, groups=4)"},
	{Spelling: "batchnorm", Builtin: "batchnorm", Op: ir.OpBatchNorm, Expr: "batchnorm(x)", Fused: "batchnorm(c)", FusedWord: "folded"},
	{Spelling: "dense", Builtin: "dense", Op: ir.OpDense, Expr: "dense(flatten(global_avgpool(x)), 10)"},
	{Spelling: "relu", Builtin: "relu", Op: ir.OpReLU, Expr: "relu(x)", Fused: "relu(c)", FusedWord: "fused"},
	{Spelling: "maxpool", Builtin: "maxpool", Op: ir.OpMaxPool, Expr: "maxpool(x, 3, stride=2, pad=1)"},
	{Spelling: "avgpool", Builtin: "avgpool", Op: ir.OpAvgPool, Expr: "avgpool(x, 3, stride=2, pad=1)"},
	{Spelling: "global_avgpool", Builtin: "global_avgpool", Op: ir.OpGlobalAvgPool, Expr: "global_avgpool(x)"},
	{Spelling: "global_maxpool", Builtin: "global_maxpool", Op: ir.OpGlobalMaxPool, Expr: "global_maxpool(x)"},
	{Spelling: "sigmoid", Builtin: "sigmoid", Op: ir.OpSigmoid, Expr: "sigmoid(x)", Fused: "sigmoid(c)", FusedWord: "fused"},
	{Spelling: "tanh", Builtin: "tanh", Op: ir.OpTanh, Expr: "tanh(x)", Fused: "tanh(c)", FusedWord: "fused"},
	{Spelling: "silu", Builtin: "silu", Op: ir.OpSiLU, Expr: "silu(x)", Fused: "silu(c)", FusedWord: "fused"},
	{Spelling: "swish", Builtin: "swish", Op: ir.OpSiLU, Expr: "swish(x)", Fused: "swish(c)", FusedWord: "fused"},
	{Spelling: "hardswish", Builtin: "hardswish", Op: ir.OpHardSwish, Expr: "hardswish(x)", Fused: "hardswish(c)", FusedWord: "fused"},
	{Spelling: "clip", Builtin: "clip", Op: ir.OpClip, Expr: "clip(x, -1, 1)", Fused: "clip(c, -1, 1)", FusedWord: "fused"},
	{Spelling: "relu6", Builtin: "relu6", Op: ir.OpClip, Expr: "relu6(x)", Fused: "relu6(c)", FusedWord: "fused"},
	{Spelling: "upsample", Builtin: "upsample", Op: ir.OpUpsample, Expr: "upsample(x)"},
	{Spelling: "upsample", Builtin: "upsample", Op: ir.OpUpsample, Note: `mode="bilinear"`, Expr: `upsample(x, 2, mode="bilinear")`},
	{Spelling: "upsample", Builtin: "upsample", Op: ir.OpUpsample, Note: `mode="bilinear", align_corners=true`, Expr: `upsample(x, 2, mode="bilinear", align_corners=true)`},
	{Spelling: "reshape", Builtin: "reshape", Op: ir.OpReshape, Expr: "reshape(x, (1, -1))"},
	{Spelling: "flatten", Builtin: "flatten", Op: ir.OpFlatten, Expr: "flatten(global_avgpool(x))"},
	{Spelling: "dropout", Builtin: "dropout", Op: ir.OpDropout, Expr: "dropout(x, 0.5)"},
	{Spelling: "softmax", Builtin: "softmax", Op: ir.OpSoftmax, Expr: "softmax(dense(flatten(global_avgpool(x)), 10))"},
	{Spelling: "concat", Builtin: "concat", Op: ir.OpConcat, Expr: "concat(x, relu(x))", Fused: "concat(c, conv2d(x, 16, 1))", FusedWord: "in place"},
	{Spelling: "x + y", Op: ir.OpAdd, Expr: "x + relu(x)", Fused: "c + x", FusedWord: "fused"},
	{Spelling: "x - y", Op: ir.OpSub, Expr: "x - relu(x)", Fused: "c - x", FusedWord: "fused"},
	{Spelling: "x * 0.5, x / 2, -x", Op: ir.OpMul, Expr: "x * 0.5", Fused: "c * 0.5", FusedWord: "fused"},
	{Spelling: "x * s (s: [N, C, 1, 1])", Op: ir.OpChannelMul, Expr: "x * " + gap, Fused: "c * " + gap, FusedWord: "fused"},
}

// NotOps are the builtins that create no op: they return a compile-time
// value.
var NotOps = map[string]bool{"channels": true}

// Column is one build target of the table.
type Column struct {
	Name string
	// NotImplemented is the target table's reason it cannot be built yet
	// ("" when it can).
	NotImplemented string
	targets        []codegen.Target
	pass           passes.Target
}

// Columns returns the single-ISA build targets of the target table, in
// table order: the columns of the table.
func Columns() []Column {
	var cols []Column
	for _, b := range target.Builds() {
		if len(b.ISAs) != 1 {
			continue // x86-64 is avx512 + avx2, both columns already
		}
		c := Column{Name: b.Name}
		if why := b.NotImplemented(); why != "" {
			c.NotImplemented = why
		} else {
			ts, err := codegen.TargetsOf(b)
			if err != nil {
				c.NotImplemented = err.Error()
			}
			pt, err := passes.TargetFor(b)
			if err != nil {
				c.NotImplemented = err.Error()
			}
			c.targets, c.pass = ts, pt
		}
		cols = append(cols, c)
	}
	return cols
}

// Cell is one probe's outcome on one target.
type Cell struct {
	// Standalone is "kernel", "view", "none" or "✗" for Expr.
	Standalone string
	// Fused is FusedWord, "kernel" or "✗" for Fused ("" without one).
	Fused string
	// Errs are the refusals (pipeline or check errors), without positions.
	Errs []string
	// Skipped is set for a target that is not implemented.
	Skipped bool
}

// Row is one probe's outcomes, one cell per column.
type Row struct {
	Probe Probe
	Cells []Cell
}

// Table is the derived table.
type Table struct {
	Columns []Column
	Rows    []Row
	// Internal are ops no DSL spelling creates that the pipeline put into
	// some probe's final graph (fused convolutions, weight transforms,
	// reorders); Other are the remaining ops of the op table (training graphs,
	// ops without a DSL spelling yet).
	Internal, Other []string
}

// Build runs every probe on every column.
func Build() (*Table, error) {
	t := &Table{Columns: Columns()}
	seen := map[string]bool{}
	for _, p := range Probes {
		row := Row{Probe: p}
		for _, col := range t.Columns {
			if col.NotImplemented != "" {
				row.Cells = append(row.Cells, Cell{Skipped: true})
				continue
			}
			var cell Cell
			var err error
			cell.Standalone, err = run(p.Expr, p, col, "", seen)
			if err != nil {
				cell.Errs = append(cell.Errs, err.Error())
			}
			if p.Fused != "" {
				cell.Fused, err = run(p.Fused, p, col, p.FusedWord, seen)
				if err != nil {
					cell.Errs = append(cell.Errs, "after a conv: "+err.Error())
				}
			}
			row.Cells = append(row.Cells, cell)
		}
		t.Rows = append(t.Rows, row)
	}
	spelled := map[string]bool{}
	for _, p := range Probes {
		spelled[p.Op] = true
	}
	for _, op := range ir.Ops() {
		switch {
		case spelled[op]:
		case seen[op]:
			t.Internal = append(t.Internal, op)
		default:
			t.Other = append(t.Other, op)
		}
	}
	return t, nil
}

// run elaborates expr in probeSource, runs the pipeline for col and the
// legality check, and classifies the probed node: "kernel" when a run-time
// node of p.Op comes from the probed line, fusedWord (or "none" without
// one) when none does, "✗" with the error when the pipeline or the check
// refuses. seen collects the run-time ops of the final graph.
func run(expr string, p Probe, col Column, fusedWord string, seen map[string]bool) (string, error) {
	src := fmt.Sprintf(probeSource, expr)
	g, err := dsl.Load("probe.kiln", []byte(src), dsl.Options{Batch: 1})
	if err != nil {
		return "", fmt.Errorf("probe %q does not elaborate: %v", expr, err)
	}
	s, err := passes.Run(g, passes.Options{Target: col.pass, Consumer: passes.Codegen})
	if err != nil {
		return "✗", stripPos(err)
	}
	if err := lower.Check(s, col.targets); err != nil {
		return "✗", stripPos(err)
	}
	build := passes.BuildTime(s.Graph)
	found, view := false, false
	for i, n := range s.Graph.Nodes {
		seen[n.Op] = true
		if !build[i] && (n.Op == p.Op || slices.Contains(p.As, n.Op)) && n.Pos.Line == probeLine {
			found = true
			// A reshaping op whose result shares its operand's buffer
			// is a view: the planner aliased it and no kernel runs.
			view = len(n.Args) == 1 && s.Plan.BufferOf[i] == s.Plan.BufferOf[n.Args[0]] && reshaping[n.Op]
		}
	}
	switch {
	case found && view:
		return "view", nil
	case found:
		return "kernel", nil
	case fusedWord != "":
		return fusedWord, nil
	default:
		return "none", nil
	}
}

// reshaping are the ops that only reinterpret their operand, which the
// planner may alias (passes' view classes).
var reshaping = map[string]bool{ir.OpFlatten: true, ir.OpDropout: true, ir.OpReshape: true}

// stripPos removes the probe's source position from an error, which would
// only name probe.kiln.
func stripPos(err error) error {
	msg := err.Error()
	if i := strings.Index(msg, "probe.kiln:"); i >= 0 {
		rest := msg[i:]
		if j := strings.Index(rest, ": "); j >= 0 {
			msg = msg[:i] + rest[j+2:]
		}
	}
	return fmt.Errorf("%s", msg)
}

// Markdown renders t as the docs/DSL.md section body.
func (t *Table) Markdown() string {
	var b strings.Builder
	b.WriteString("| DSL | IR op |")
	for _, c := range t.Columns {
		fmt.Fprintf(&b, " %s |", c.Name)
	}
	b.WriteString("\n|---|---|")
	for range t.Columns {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	var notes []string
	noteOf := map[string]int{}
	note := func(s string) int {
		if k, ok := noteOf[s]; ok {
			return k
		}
		notes = append(notes, s)
		noteOf[s] = len(notes)
		return len(notes)
	}
	for _, r := range t.Rows {
		spelling := "`" + r.Probe.Spelling + "`"
		if sig, ok := dsl.BuiltinSignature(r.Probe.Builtin); ok {
			spelling = "`" + sig + "`"
		}
		if r.Probe.Note != "" {
			spelling += " " + r.Probe.Note
		}
		fmt.Fprintf(&b, "| %s | `%s` |", spelling, r.Probe.Op)
		for j, c := range r.Cells {
			if c.Skipped {
				fmt.Fprintf(&b, " — [%d] |", note(t.Columns[j].NotImplemented))
				continue
			}
			s := c.Standalone
			if c.Fused != "" && c.Fused != "kernel" {
				s += ", " + c.Fused
			}
			for _, e := range c.Errs {
				s += fmt.Sprintf(" [%d]", note(e))
			}
			fmt.Fprintf(&b, " %s |", s)
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
	for i, n := range notes {
		fmt.Fprintf(&b, "[%d] %s\n", i+1, strings.ReplaceAll(n, "\n", " "))
		if i == len(notes)-1 {
			b.WriteString("\n")
		}
	}
	if len(t.Internal) > 0 {
		fmt.Fprintf(&b, "Ops no DSL spelling creates, made by the pipeline in the probes above: %s.\n", codeList(t.Internal))
	}
	if len(t.Other) > 0 {
		fmt.Fprintf(&b, "Ops of the op table no DSL spelling creates and no inference pipeline makes from the probes (training graphs, `kiln train`, or no builtin yet): %s.\n", codeList(t.Other))
	}
	return b.String()
}

func codeList(ops []string) string {
	ops = append([]string(nil), ops...)
	sort.Strings(ops)
	for i, op := range ops {
		ops[i] = "`" + op + "`"
	}
	return strings.Join(ops, ", ")
}

// Markers delimit the generated table in docs/DSL.md.
const (
	BeginMarker = "<!-- BEGIN GENERATED by `go generate ./internal/optable`; do not edit -->"
	EndMarker   = "<!-- END GENERATED -->"
)

// Replace returns doc with the text between the markers replaced by body.
func Replace(doc, body string) (string, error) {
	i := strings.Index(doc, BeginMarker)
	j := strings.Index(doc, EndMarker)
	if i < 0 || j < i {
		return "", fmt.Errorf("optable: the document has no %q ... %q section", BeginMarker, EndMarker)
	}
	return doc[:i+len(BeginMarker)] + "\n" + body + doc[j:], nil
}

//go:generate go run ./gen -doc ../../docs/DSL.md
