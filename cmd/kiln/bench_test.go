package main

import (
	"encoding/csv"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/internal/testenv"
	rt "github.com/kiln-dev/kiln/runtime"
)

// benchKiln runs kiln bench with a short peak measurement. Where nothing can
// be compiled or loaded (no LLVM, no cgo, a CPU without Kiln's ISAs) the test
// skips, or fails under KILN_REQUIRE_TOOLS=1 (testenv). Performance figures
// are checked for sanity only: the machine may be shared.
func benchKiln(t *testing.T, args ...string) (string, string) {
	t.Helper()
	_, err := codegen.FindLLVM()
	testenv.Check(t, err)
	if len(rt.HostISAs()) == 0 {
		testenv.Missing(t, "this CPU runs none of Kiln's ISAs (AVX-512, AVX2+FMA, NEON); CI's machine has AVX-512")
	}
	old := peakBudget
	peakBudget = 50 * time.Millisecond
	defer func() { peakBudget = old }()
	code, out, errs := kiln(t, append([]string{"bench"}, args...)...)
	if code != 0 && strings.Contains(errs, "without cgo") {
		for _, l := range strings.Split(errs, "\n") {
			if strings.Contains(l, "without cgo") {
				testenv.Missing(t, "cgo: %s", strings.TrimSpace(l))
			}
		}
	}
	if code != 0 {
		t.Fatalf("kiln bench %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, errs)
	}
	return out, errs
}

// sanePercent checks a percentage of peak: positive and, allowing for the
// noise of a shared machine, below 200.
func sanePercent(t *testing.T, what string, p float64) {
	t.Helper()
	if !(p > 0 && p < 200) {
		t.Errorf("%s: %v%% of peak, want in (0, 200)", what, p)
	}
}

func TestBenchTable(t *testing.T) {
	out, _ := benchKiln(t, "tiny", "--min-time", "0.2s", "--threads", "1")
	for _, re := range []string{
		`(?m)^network +tiny, batch 1, input 1x3x32x32, 810,256 MACs`,
		`(?m)^runtime +(avx512|avx2|neon), 1 thread; 3 warm-up runs, then \d+ timed runs`,
		`(?m)^latency +median [0-9.]+ [mun]s +p10 [0-9.]+ [mun]s +p90 [0-9.]+ [mun]s$`,
		`(?m)^throughput +[0-9.]+ GFLOP/s = [0-9.]+% of peak`,
		`(?m)^FMA peak +[0-9.]+ GFLOP/s \((avx512|avx2|neon), 1 thread,`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("output lacks %s:\n%s", re, out)
		}
	}
	if strings.Contains(out, "kernels by median time") {
		t.Errorf("kernel table without --layers:\n%s", out)
	}
}

func TestBenchJSON(t *testing.T) {
	out, _ := benchKiln(t, "tiny", "--min-time", "0.2s", "--threads", "1", "--layers", "--format", "json")
	var res map[string]any
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, k := range []string{"network", "batch", "input_shape", "isa", "threads", "warmup_runs", "runs", "total_s",
		"latency_ms", "macs", "gflop", "gflops", "images_per_s", "percent_of_peak", "peak", "kernels", "layers", "below_peak"} {
		if _, ok := res[k]; !ok {
			t.Errorf("JSON lacks %q", k)
		}
	}
	// Decode again into the typed result to check values.
	var r benchResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	if r.Network != "tiny" || r.Batch != 1 || r.Threads != 1 || r.MACs != 810256 || r.Runs < benchMinRuns || r.WarmupRuns != 3 {
		t.Errorf("result %+v", r)
	}
	l := r.Latency
	if !(l.Min > 0 && l.Min <= l.P10 && l.P10 <= l.Median && l.Median <= l.P90 && l.P90 <= l.Max) {
		t.Errorf("latency statistics out of order: %+v", l)
	}
	if !(r.GFLOPs > 0 && r.Peak.GFLOPs > 0) || r.Peak.ISA != r.ISA || r.Peak.Threads != 1 || r.Peak.Chains < 12 {
		t.Errorf("throughput %v GFLOP/s, peak %+v", r.GFLOPs, r.Peak)
	}
	sanePercent(t, "network", r.PercentOfPeak)
	if len(r.Layers) != r.Kernels || r.Kernels == 0 {
		t.Fatalf("%d layers, %d kernels", len(r.Layers), r.Kernels)
	}
	var macs int64
	var share float64
	labels := map[string]bool{}
	for i, ly := range r.Layers {
		macs += ly.MACs
		share += ly.Share
		labels[ly.Label] = true
		if i > 0 && ly.MedianMS > r.Layers[i-1].MedianMS {
			t.Errorf("layers not sorted by time: %s after %s", ly.Kernel, r.Layers[i-1].Kernel)
		}
		if ly.Kernel == "" || ly.Op == "" || ly.Shape == "" {
			t.Errorf("layer %+v lacks a name, op or shape", ly)
		}
		if (ly.MACs > 0) != (ly.GFLOPs != nil) || (ly.GFLOPs == nil) != (ly.PercentOfPeak == nil) {
			t.Errorf("layer %s: %d MACs, gflops %v, percent %v", ly.Kernel, ly.MACs, ly.GFLOPs, ly.PercentOfPeak)
		}
		if ly.Op == "conv" && !regexp.MustCompile(`^\d+x\d+(/\d+)? \d+->\d+ \d+x\d+`).MatchString(ly.Shape) {
			t.Errorf("conv %s shape %q", ly.Kernel, ly.Shape)
		}
	}
	if macs != r.MACs {
		t.Errorf("layer MACs sum to %d, network %d", macs, r.MACs)
	}
	if share < 0.99 || share > 1.01 {
		t.Errorf("shares sum to %v", share)
	}
	for _, want := range []string{"stem.0.conv", "stem.2", "fc", "probs"} {
		if !labels[want] {
			t.Errorf("no kernel labelled %s", want)
		}
	}
	if len(r.BelowPeak) != 10 {
		t.Errorf("below_peak lists %d kernels, want 10", len(r.BelowPeak))
	}
	// The network's percentage sits between its layers' extremes; single
	// kernels are too short for a sanity bound on a shared machine.
	for _, k := range r.BelowPeak {
		for _, ly := range r.Layers {
			if ly.Kernel == k && (ly.PercentOfPeak == nil || !(*ly.PercentOfPeak > 0)) {
				t.Errorf("below_peak kernel %s: %+v", k, ly)
			}
		}
	}
}

func TestBenchCSV(t *testing.T) {
	out, _ := benchKiln(t, "tiny", "--min-time", "0.2s", "--threads", "1", "--layers", "--format", "csv")
	rows, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(rows) < 3 || strings.Join(rows[0], ",") != strings.Join(benchCSVHeader, ",") {
		t.Fatalf("CSV header %v, want %v (%d rows)", rows[0], benchCSVHeader, len(rows))
	}
	col := map[string]int{}
	for i, c := range rows[0] {
		col[c] = i
	}
	if rows[1][col["scope"]] != "network" || rows[1][col["network"]] != "tiny" || rows[1][col["macs"]] != "810256" {
		t.Errorf("network row %v", rows[1])
	}
	pct, err := strconv.ParseFloat(rows[1][col["percent_of_peak"]], 64)
	if err != nil {
		t.Fatal(err)
	}
	sanePercent(t, "network", pct)
	for _, r := range rows[2:] {
		if len(r) != len(benchCSVHeader) || r[col["scope"]] != "kernel" || r[col["kernel"]] == "" {
			t.Errorf("kernel row %v", r)
		}
	}
	// Without --layers: the network row only.
	out, _ = benchKiln(t, "tiny", "--min-time", "0.1s", "--threads", "1", "--format", "csv")
	if n := strings.Count(out, "\n"); n != 2 {
		t.Errorf("CSV without --layers has %d lines, want 2:\n%s", n, out)
	}
}

func TestBenchLayersTable(t *testing.T) {
	out, _ := benchKiln(t, "tiny", "--min-time", "0.2s", "--threads", "1", "--layers")
	for _, want := range []string{
		"kernels by median time over",
		"kernel  ", "label", "shape", "GFLOP/s", "% peak",
		"stem.0.conv", "3x3/2 3->16 32x32->15x15", "maxpool", "reorder", "dense", "softmax",
		"10 kernels furthest below peak (of 20 with MACs)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("--layers output lacks %q:\n%s", want, out)
		}
	}
	if !regexp.MustCompile(`(?m)^total +[0-9.]+ [mun]s +100\.0%`).MatchString(out) {
		t.Errorf("no total row:\n%s", out)
	}
}

func TestBenchPeak(t *testing.T) {
	out, _ := benchKiln(t, "--peak", "--threads", "2", "--format", "json")
	var res struct {
		Peak []peakResult `json:"peak"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	isas := rt.HostISAs()
	if len(res.Peak) != 2*len(isas) {
		t.Fatalf("%d rows for ISAs %v and 1..2 threads:\n%s", len(res.Peak), isas, out)
	}
	for i, p := range res.Peak {
		if p.ISA != isas[i/2] || p.Threads != 1+i%2 || !(p.GFLOPs > 0) || !(p.GFLOPsPerThread > 0) ||
			p.Runs < peakMinRuns || !(p.BestMS > 0) || p.Chains < 12 || p.Lanes < 4 {
			t.Errorf("row %d: %+v", i, p)
		}
	}
	out, _ = benchKiln(t, "--peak", "--threads", "1", "--isa", isas[len(isas)-1])
	re := regexp.MustCompile(`(?m)^ *` + isas[len(isas)-1] + ` +1 +([0-9.]+) +([0-9.]+) +\d+ x \d+ lanes`)
	m := re.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("table lacks a row for %s:\n%s", isas[len(isas)-1], out)
	}
	if v, _ := strconv.ParseFloat(m[1], 64); !(v > 0) {
		t.Errorf("peak %s GFLOP/s", m[1])
	}
	if strings.Count(out, "lanes") != 1 {
		t.Errorf("--isa: want one row:\n%s", out)
	}
	out, _ = benchKiln(t, "--peak", "--threads", "1", "--format", "csv")
	rows, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil || len(rows) != 1+len(isas) || rows[0][0] != "isa" || rows[0][2] != "gflops" {
		t.Errorf("CSV: %v\n%s", err, out)
	}
}

func TestBenchUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"help", []string{"-h"}, 0, ""},
		{"no file", nil, 2, "missing FILE"},
		{"two files", []string{"tiny", "tiny"}, 2, "want one FILE"},
		{"bad format", []string{"--format", "xml", "tiny"}, 2, "--format must be table, csv or json"},
		{"negative threads", []string{"--threads", "-1", "tiny"}, 2, "--threads must not be negative"},
		{"zero min-time", []string{"--min-time", "0s", "tiny"}, 2, "--min-time must be positive"},
		{"bad min-time", []string{"--min-time", "soon", "tiny"}, 2, "invalid value"},
		{"few warmups", []string{"--warmup", "1", "tiny"}, 2, "--warmup must be at least 3"},
		{"bad batch", []string{"--batch", "0", "tiny"}, 2, "--batch must be positive"},
		{"peak with file", []string{"--peak", "tiny"}, 2, "--peak takes no FILE"},
		{"peak with layers", []string{"--peak", "--layers"}, 2, "--peak takes only --threads, --isa and --format, not --layers"},
		{"peak with unknown isa", []string{"--peak", "--isa", "sse9"}, 2, "--isa \"sse9\""},
		{"no such network", []string{"nonet"}, 1, "not a built-in network"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := kiln(t, append([]string{"bench"}, tc.args...)...)
			if code != tc.code || !strings.Contains(errs, tc.want) {
				t.Fatalf("kiln bench %v: exit %d (want %d)\nstdout:\n%s\nstderr:\n%s\nwant stderr ⊇ %q", tc.args, code, tc.code, out, errs, tc.want)
			}
		})
	}
	code, out, _ := kiln(t, "bench", "-h")
	for _, flag := range []string{"-layers", "-peak", "-min-time", "-format", "-isa", "-threads", "-batch", "-input", "-weights", "-warmup"} {
		if code != 0 || !strings.Contains(out, flag) {
			t.Errorf("bench -h lacks %s (exit %d):\n%s", flag, code, out)
		}
	}
}
