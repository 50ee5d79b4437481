package passes

import (
	"strings"
	"testing"
)

// TestRequirements checks CheckRequirements for each disabled pass and
// --stop-after against code generation and kiln plan, and a pass-level
// requirement through a test pipeline.
func TestRequirements(t *testing.T) {
	cases := []struct {
		name      string
		disabled  []string
		stopAfter string
		consumer  *Consumer
		want      string // "" for accepted
	}{
		{"full pipeline, codegen", nil, "", Codegen, ""},
		{"no consumer, anything goes", []string{"layout", "plan-buffers"}, "", nil, ""},
		{"dce is optional", []string{"dce"}, "", Codegen, ""},
		{"schedule is optional", []string{"schedule"}, "", Codegen, ""},
		{"fold-bn is optional", []string{"fold-bn"}, "", Codegen, ""},
		{"fold-residual-scale is optional", []string{"fold-residual-scale"}, "", Codegen, ""},
		{"fuse-epilogue is optional", []string{"fuse-epilogue"}, "", Codegen, ""},
		{"concat-in-place is optional", []string{"concat-in-place"}, "", Codegen, ""},
		{"all rewrites off", []string{"fold-bn", "fold-residual-scale", "fuse-epilogue", "concat-in-place", "dce", "schedule"}, "", Codegen, ""},
		{"layout", []string{"layout"}, "", Codegen, "requires blocked-layout: pass layout, which provides it, is disabled (--disable layout)"},
		{"plan-buffers", []string{"plan-buffers"}, "", Codegen, "requires planned: pass plan-buffers, which provides it, is disabled"},
		{"plan report without planner", []string{"plan-buffers"}, "", PlanReport, "kiln plan requires planned"},
		{"plan report without layout", []string{"layout"}, "", PlanReport, ""},
		{"stop-after", nil, "layout", Codegen, "requires planned: pass plan-buffers, which provides it, does not run (--stop-after layout)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			opts := Options{Disabled: map[string]bool{}, StopAfter: c.stopAfter, Consumer: c.consumer}
			for _, d := range c.disabled {
				opts.Disabled[d] = true
			}
			err := CheckRequirements(opts)
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("CheckRequirements = %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// TestPassRequires checks a pass-level requirement on a test pipeline: a
// pass requiring a property refuses to run when its provider is disabled or
// comes later, and Run refuses before running anything.
func TestPassRequires(t *testing.T) {
	ran := false
	a := &Pass{Name: "a", Provides: []string{"x"}, Run: func(*State) error { ran = true; return nil }}
	b := &Pass{Name: "b", Requires: []string{"x"}, Run: func(*State) error { ran = true; return nil }}
	cases := []struct {
		name     string
		pipeline []*Pass
		disabled string
		want     string
	}{
		{"ok", []*Pass{a, b}, "", ""},
		{"provider disabled", []*Pass{a, b}, "a", "pass b requires x: pass a, which provides it, is disabled (--disable a)"},
		{"provider later", []*Pass{b, a}, "", "pass b requires x: pass a, which provides it, runs later"},
		{"no provider", []*Pass{b}, "", "pass b requires x: no pass provides it"},
		{"requirer disabled", []*Pass{a, b}, "b", ""},
	}
	g := load(t, "tiny", 1, nil)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ran = false
			opts := Options{Disabled: map[string]bool{c.disabled: c.disabled != ""}}
			err := checkRequirements(c.pipeline, opts)
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("checkRequirements = %v, want an error containing %q", err, c.want)
			}
			if _, err := runPasses(g, c.pipeline, Options{Disabled: opts.Disabled}); err == nil || ran {
				t.Fatalf("runPasses: err %v, a pass ran: %v", err, ran)
			}
		})
	}
}

// TestEveryPassProvides checks that every pipeline pass declares what it
// provides and that the consumers' requirements are all provided.
func TestEveryPassProvides(t *testing.T) {
	for _, p := range Pipeline() {
		if len(p.Provides) == 0 {
			t.Errorf("pass %s provides nothing", p.Name)
		}
	}
	for _, c := range []*Consumer{Codegen, PlanReport} {
		for _, r := range c.Requires {
			if len(providers(Pipeline(), r)) == 0 {
				t.Errorf("%s requires %s, which no pass provides", c.Name, r)
			}
		}
	}
}
