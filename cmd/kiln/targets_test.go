package main

import (
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/passes"
	"github.com/kiln-dev/kiln/target"
)

// TestTargetsCommand checks that kiln targets lists every entry of the
// target table, ISAs and build targets, with the GPU ones marked.
func TestTargetsCommand(t *testing.T) {
	code, out, errs := kiln(t, "targets")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, tg := range target.Targets() {
		if !strings.Contains(out, tg.Name) || !strings.Contains(out, tg.Triple) || !strings.Contains(out, strings.Join(tg.Features, ",")) {
			t.Errorf("kiln targets does not list %s (%s, %v):\n%s", tg.Name, tg.Triple, tg.Features, out)
		}
	}
	for _, b := range target.Builds() {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(b.Name) + ` `).MatchString(out) {
			t.Errorf("kiln targets does not list build target %s:\n%s", b.Name, out)
		}
	}
	if !strings.Contains(out, "GPU code generation is not implemented yet (issue 12)") {
		t.Errorf("kiln targets does not say why the GPU targets cannot be built:\n%s", out)
	}
}

// TestTargetFlag checks --target on plan and build: every build target is
// accepted by plan, GPU targets fail with a clear message, unknown ones are
// usage errors.
func TestTargetFlag(t *testing.T) {
	cases := []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"plan", "--target", "x86-64", "tiny"}, 0, "target x86-64", ""},
		{[]string{"plan", "--target", "avx512", "tiny"}, 0, "target avx512", ""},
		{[]string{"plan", "--target", "avx2", "tiny"}, 0, "target avx2", ""},
		{[]string{"plan", "--target", "arm64-neon", "tiny"}, 0, "target arm64-neon", ""},
		{[]string{"plan", "--target", "cuda-sm90", "tiny"}, 1, "", "--target cuda-sm90: target cuda-sm90: GPU code generation is not implemented yet (issue 12)"},
		{[]string{"plan", "--target", "riscv64", "tiny"}, 2, "", `--target: unknown target "riscv64"`},
		{[]string{"build", "--target", "cuda-sm80", "--format", "lib", "-o", "x", "tiny"}, 2, "", "--format lib: a GPU target builds exe, program or weights"}, // GPU builds: build_cuda_test.go
		{[]string{"build", "--target", "riscv64", "-o", "x", "tiny"}, 2, "", `unsupported --target "riscv64"`},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			code, out, errs := kiln(t, c.args...)
			if code != c.code || !strings.Contains(out, c.stdout) || !strings.Contains(errs, c.stderr) {
				t.Fatalf("exit %d (want %d)\nstdout:\n%s\nstderr:\n%s\nwant stdout ⊇ %q, stderr ⊇ %q", code, c.code, out, errs, c.stdout, c.stderr)
			}
		})
	}
	// The avx2 plan is the x86-64 plan (both NCHW16c), not an NCHW8c one.
	_, x86, _ := kiln(t, "plan", "--target", "x86-64", "tiny")
	_, avx2, _ := kiln(t, "plan", "--target", "avx2", "tiny")
	if a, b := planFigures(t, x86), planFigures(t, avx2); a != b {
		t.Errorf("avx2 plan %+v differs from the x86-64 plan %+v", b, a)
	}
}

// planNumbers are the figures kiln plan prints that a build's manifest
// also states.
type planNumbers struct {
	arena, in, out int64 // bytes; input and output offsets in bytes
}

var (
	arenaRE = regexp.MustCompile(`(?m)^arena +([0-9,]+) bytes`)
	ioRE    = regexp.MustCompile(`(?m)^(input|output) +\S+ \S+ at byte offset (\d+)$`)
)

func planFigures(t *testing.T, out string) planNumbers {
	t.Helper()
	num := func(s string) int64 {
		n, err := strconv.ParseInt(strings.ReplaceAll(s, ",", ""), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	var p planNumbers
	m := arenaRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no arena line in kiln plan output:\n%s", out)
	}
	p.arena = num(m[1])
	ios := ioRE.FindAllStringSubmatch(out, -1)
	if len(ios) != 2 || ios[0][1] != "input" || ios[1][1] != "output" {
		t.Fatalf("want one input and one output line in kiln plan output:\n%s", out)
	}
	p.in, p.out = num(ios[0][2]), num(ios[1][2])
	return p
}

// TestPlanMatchesManifest checks that kiln plan --target X prints the plan
// kiln build --target X uses: arena size and input/output offsets equal
// those of the manifest of a build of the same network for the same target
// (built in-process through LLVM, as kiln build does).
func TestPlanMatchesManifest(t *testing.T) {
	_, err := codegen.FindLLVM()
	testenv.Check(t, err)
	for _, name := range []string{"x86-64", "avx512", "avx2", "arm64-neon"} {
		t.Run(name, func(t *testing.T) {
			bt, err := lookupBuildTarget(name)
			if err != nil {
				t.Fatal(err)
			}
			if bt.build.Arch() != runtime.GOARCH {
				_, err := codegen.CrossCFlags(bt.cg[0])
				testenv.Check(t, err)
				if _, err := exec.LookPath("ld.lld-19"); err != nil {
					testenv.LookPath(t, "ld.lld")
				}
			}
			for _, batch := range []string{"1", "2"} {
				code, out, errs := kiln(t, "plan", "--target", name, "--batch", batch, "tiny")
				if code != 0 {
					t.Fatalf("kiln plan: exit %d: %s", code, errs)
				}
				want := planFigures(t, out)
				var nf netFlags
				nf.batch, _ = strconv.Atoi(batch)
				g, err := nf.load("tiny")
				if err != nil {
					t.Fatal(err)
				}
				params, err := loadWeights(g, "")
				if err != nil {
					t.Fatal(err)
				}
				var pf pipeFlags
				c, err := compileNet(g, params, bt, &pf, nil)
				if err != nil {
					t.Fatal(err)
				}
				m := c.prog.Manifest
				got := planNumbers{m.ArenaBytes, 4 * m.Input.Offset, 4 * m.Output.Offset}
				if got != want {
					t.Errorf("batch %s: manifest %+v, kiln plan printed %+v", batch, got, want)
				}
				if strings.Join(m.ISAs, ",") != strings.Join(bt.build.ISAs, ",") {
					t.Errorf("manifest ISAs %v, build target %s has %v", m.ISAs, name, bt.build.ISAs)
				}
				for _, tg := range bt.cg {
					if strings.Join(m.Features[tg.Name], ",") != strings.Join(tg.Features, ",") {
						t.Errorf("manifest declares %v for %s, codegen used %v", m.Features[tg.Name], tg.Name, tg.Features)
					}
				}
			}
		})
	}
}

// TestDisabledPassRequirements disables each pass in turn and checks each
// command: code generation (build, run --backend cpu, bench, demo all go
// through compileNet) fails at once, naming the disabled pass and who needs
// it, for every pass it requires; kiln plan fails only without
// plan-buffers; kiln dump always works.
func TestDisabledPassRequirements(t *testing.T) {
	required := map[string]bool{}
	for _, r := range passes.Codegen.Requires {
		for _, p := range passes.Pipeline() {
			for _, q := range p.Provides {
				if q == r {
					required[p.Name] = true
				}
			}
		}
	}
	for _, p := range []string{"layout", "plan-buffers"} {
		if !required[p] {
			t.Errorf("code generation does not require pass %s, which lower needs", p)
		}
	}
	// The rewrites are optimizations: every op has a standalone kernel
	// (codegen/lower TestDisabledPassesCompiled builds and runs them).
	for _, p := range []string{"fold-bn", "fold-residual-scale", "fuse-epilogue", "concat-in-place", "dce", "schedule"} {
		if required[p] {
			t.Errorf("code generation requires pass %s, an optimization", p)
		}
	}
	for _, p := range passes.Pipeline() {
		t.Run(p.Name, func(t *testing.T) {
			// dump: analysis works whatever is disabled.
			if code, _, errs := kiln(t, "dump", "--disable", p.Name, "--format", "counts", "tiny"); code != 0 {
				t.Errorf("kiln dump --disable %s: exit %d: %s", p.Name, code, errs)
			}
			// plan: needs plan-buffers only.
			code, _, errs := kiln(t, "plan", "--disable", p.Name, "tiny")
			if p.Name == "plan-buffers" {
				want := "kiln plan requires planned: pass plan-buffers, which provides it, is disabled (--disable plan-buffers)"
				if code != 1 || !strings.Contains(errs, want) {
					t.Errorf("kiln plan --disable plan-buffers: exit %d, stderr %q; want exit 1 and %q", code, errs, want)
				}
			} else if code != 0 {
				t.Errorf("kiln plan --disable %s: exit %d: %s", p.Name, code, errs)
			}
			// code generation: refused before any pass runs when required.
			if !required[p.Name] {
				return
			}
			bt, err := lookupBuildTarget(hostTarget())
			if err != nil {
				t.Fatal(err)
			}
			pf := pipeFlags{disable: listFlag{p.Name}}
			_, err = compileNet(nil, nil, bt, &pf, nil) // nil graph: must fail before touching it
			want := "code generation (kiln build, run --backend cpu, bench, demo) requires "
			if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "--disable "+p.Name) {
				t.Fatalf("compileNet with --disable %s: %v; want an error containing %q and naming the pass", p.Name, err, want)
			}
		})
	}
	// --stop-after before a required pass is refused the same way.
	code, _, errs := kiln(t, "plan", "--stop-after", "layout", "tiny")
	if want := "pass plan-buffers, which provides it, does not run (--stop-after layout)"; code != 1 || !strings.Contains(errs, want) {
		t.Errorf("kiln plan --stop-after layout: exit %d, stderr %q; want %q", code, errs, want)
	}
}
