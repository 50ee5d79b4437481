package optable

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir"
)

var update = flag.Bool("update", false, "rewrite docs/DSL.md's generated table")

// TestDSLDocTable fails when docs/DSL.md's "what compiles on which target"
// table differs from what the code says today (-update rewrites it; so does
// go generate ./internal/optable).
func TestDSLDocTable(t *testing.T) {
	path := filepath.Join("..", "..", "docs", "DSL.md")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tab, err := Build()
	if err != nil {
		t.Fatal(err)
	}
	want, err := Replace(string(b), tab.Markdown())
	if err != nil {
		t.Fatal(err)
	}
	if want == string(b) {
		return
	}
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("%s: the generated op table is out of date; run `go generate ./internal/optable` (or go test -run TestDSLDocTable ./internal/optable -update). Today's table:\n%s", path, tab.Markdown())
}

// TestProbesCoverBuiltins checks that every DSL builtin that creates an op
// has a probe, and that every probe elaborates and creates its op on the
// probed line.
func TestProbesCoverBuiltins(t *testing.T) {
	probed := map[string]bool{}
	for _, p := range Probes {
		probed[p.Builtin] = true
	}
	for _, name := range dsl.BuiltinNames() {
		if !probed[name] && !NotOps[name] {
			t.Errorf("builtin %s has no probe in optable.Probes (add one, or list it in NotOps)", name)
		}
	}
	for _, p := range Probes {
		for _, expr := range []string{p.Expr, p.Fused} {
			if expr == "" {
				continue
			}
			g, err := dsl.Load("probe.kiln", []byte(fmt.Sprintf(probeSource, expr)), dsl.Options{Batch: 1})
			if err != nil {
				t.Errorf("probe %s %q: %v", p.Spelling, expr, err)
				continue
			}
			found := false
			for _, n := range g.Nodes {
				found = found || (n.Op == p.Op && n.Pos.Line == probeLine)
			}
			if !found {
				t.Errorf("probe %s %q makes no %s node on line %d", p.Spelling, expr, p.Op, probeLine)
			}
		}
	}
}

// TestTableDerived checks properties the table must have whatever the
// kernels: every op of the op table is in a row or one of the lists, and a
// target the table marks not implemented has no "kernel" cell.
func TestTableDerived(t *testing.T) {
	tab, err := Build()
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, r := range tab.Rows {
		listed[r.Probe.Op] = true
	}
	for _, op := range append(tab.Internal, tab.Other...) {
		listed[op] = true
	}
	for _, op := range ir.Ops() {
		if !listed[op] {
			t.Errorf("op %s is missing from the table", op)
		}
	}
	for _, r := range tab.Rows {
		for j, c := range r.Cells {
			col := tab.Columns[j]
			if col.NotImplemented != "" && !c.Skipped {
				t.Errorf("%s on %s: not implemented but probed", r.Probe.Spelling, col.Name)
			}
			if col.NotImplemented == "" && c.Standalone == "" {
				t.Errorf("%s on %s: no outcome", r.Probe.Spelling, col.Name)
			}
		}
	}
}
