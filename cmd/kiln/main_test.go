package main

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/kiln-dev/kiln/internal/fixtures"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// kiln runs the CLI in-process and returns exit status, stdout and stderr.
func kiln(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestExitCodesAndMessages(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.kiln")
	if err := os.WriteFile(bad, []byte("network n(x: f32[N, 3, 8, 8]) {\n  y = conv2d(x, 4, kernel=3,\n  return y\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string // substring expected in stdout
		stderr string // substring expected in stderr
	}{
		{"no args", nil, 2, "", "Usage: kiln <command>"},
		{"help", []string{"-h"}, 0, "Commands:", ""},
		{"unknown command", []string{"frob"}, 2, "", `unknown command "frob"`},
		{"check help", []string{"check", "-h"}, 0, "Usage: kiln check", ""},
		{"stats help", []string{"stats", "-h"}, 0, "-layers", ""},
		{"params help", []string{"params", "-h"}, 0, "Usage: kiln params", ""},
		{"dump help", []string{"dump", "-h"}, 0, "-format", ""},
		{"run help", []string{"run", "-h"}, 0, "-weights", ""},
		{"demo help", []string{"demo", "-h"}, 0, "Usage: kiln demo", ""},
		{"missing file arg", []string{"check"}, 2, "", "missing FILE"},
		{"bad flag", []string{"check", "--nope", "tiny"}, 2, "", "flag provided but not defined"},
		{"no such file", []string{"check", filepath.Join(dir, "none.kiln")}, 1, "", "no such file"},
		{"syntax error", []string{"check", bad}, 1, "", "bad.kiln:3:"},
		{"check ok", []string{"check", "tiny"}, 0, "ok tiny", ""},
		{"bad batch", []string{"check", "--batch", "0", "tiny"}, 2, "", "--batch must be positive"},
		{"bad input shape", []string{"stats", "--input", "3x-2x4", "tiny"}, 2, "", "--input"},
		{"bad format", []string{"dump", "--format", "svg", "tiny"}, 2, "", "--format must be text, dot or counts"},
		{"run needs io", []string{"run", "tiny"}, 2, "", "--input and --output are required"},
		{"unknown backend", []string{"run", "--backend", "gpu", "--input", "x", "--output", "y", "tiny"}, 2, "", "unknown --backend"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := kiln(t, tc.args...)
			if code != tc.code || !strings.Contains(out, tc.stdout) || !strings.Contains(errs, tc.stderr) {
				t.Fatalf("kiln %v: exit %d (want %d)\nstdout:\n%s\nstderr:\n%s\nwant stdout ⊇ %q, stderr ⊇ %q",
					tc.args, code, tc.code, out, errs, tc.stdout, tc.stderr)
			}
		})
	}
}

// TestStatsFigures pins the parameter and MAC counts of the three networks at
// 299x299 with a 1000-class head (ARCHITECTURES.md §6).
func TestStatsFigures(t *testing.T) {
	tests := []struct{ net, params, macs string }{
		{"inception_v4", "42,679,816", "12,253,974,624"},
		{"inception_resnet_v2", "55,843,464", "13,155,794,016"},
		{"inception_resnet_v1", "22,756,328", "6,206,361,696"},
	}
	for _, tc := range tests {
		t.Run(tc.net, func(t *testing.T) {
			code, out, errs := kiln(t, "stats", tc.net, "--input", "3x299x299")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errs)
			}
			if !strings.Contains(out, "parameters: "+tc.params+"\n") || !strings.Contains(out, "MACs:       "+tc.macs+"\n") {
				t.Fatalf("stats output:\n%s\nwant %s parameters and %s MACs", out, tc.params, tc.macs)
			}
			code, out, _ = kiln(t, "stats", "--layers", tc.net)
			if code != 0 || !strings.Contains(out, "total") {
				t.Fatalf("--layers: exit %d\n%s", code, out)
			}
			// The per-block table's total row repeats the network totals.
			if !strings.Contains(out, tc.params) || !strings.Contains(out, tc.macs) {
				t.Fatalf("--layers table lacks totals:\n%s", out)
			}
		})
	}
}

// TestParamsMatchTimm checks `kiln params` against timm's state_dict listing
// (without num_batches_tracked), name for name, shape for shape, in order.
func TestParamsMatchTimm(t *testing.T) {
	for _, net := range []string{"inception_v4", "inception_resnet_v2"} {
		t.Run(net, func(t *testing.T) {
			f, err := os.Open(fixtures.Path(t, "timm_state_dict_"+net+".tsv"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var want []string
			sc := bufio.NewScanner(f)
			sc.Scan() // header
			for sc.Scan() {
				name, shape, _ := strings.Cut(sc.Text(), "\t")
				if strings.HasSuffix(name, "num_batches_tracked") {
					continue
				}
				dims := strings.Split(strings.Trim(shape, "[]"), ",")
				want = append(want, name+"\t"+strings.Join(dims, "x"))
			}
			code, out, errs := kiln(t, "params", net)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errs)
			}
			got := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			if d := cmp.Diff(want, got); d != "" {
				t.Fatalf("kiln params %s differs from timm (-timm +kiln):\n%s", net, d)
			}
		})
	}
}

func TestDumpFormats(t *testing.T) {
	code, out, errs := kiln(t, "dump", "tiny")
	if code != 0 || !strings.HasPrefix(out, "graph ") {
		t.Fatalf("text dump: exit %d %s\n%s", code, errs, out)
	}
	code, out, errs = kiln(t, "dump", "--format", "dot", "tiny")
	if code != 0 || !strings.HasPrefix(out, "digraph ") {
		t.Fatalf("dot dump: exit %d %s\n%s", code, errs, out)
	}
}

// TestRunErrors covers bad tensors and weights given to kiln run: every case is
// a clear error naming the file, exit status 1, and no output file.
func TestRunErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	npy := func(name string, shape ...int) string {
		p := filepath.Join(dir, name)
		if err := tensor.WriteNPYFile(p, tensor.New(shape...)); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// sparse makes a file of n bytes without writing them (issue 11:
	// --input read without limit).
	sparse := func(name string, n int64) string {
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(n); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := npy("good.npy", 1, 3, 32, 32)
	goodBytes, _ := os.ReadFile(good)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"wrong channels", []string{"--input", npy("c4.npy", 1, 4, 32, 32)}, "has 4 channels, tiny expects 3"},
		{"wrong rank", []string{"--input", npy("r2.npy", 3, 32)}, "has rank 2"},
		{"too small", []string{"--input", npy("small.npy", 1, 3, 2, 2)}, "small.npy"},
		{"truncated npy", []string{"--input", write("trunc.npy", goodBytes[:len(goodBytes)-7])}, "trunc.npy"},
		{"not npy", []string{"--input", write("text.npy", []byte("hello"))}, "text.npy"},
		{"missing npy", []string{"--input", filepath.Join(dir, "absent.npy")}, "absent.npy"},
		{"endless input", []string{"--input", "/dev/zero"}, "read npy /dev/zero: a device or socket, not a file"},
		{"oversized input", []string{"--input", sparse("huge.npy", 3<<30)}, "more than the 2147549184 this tensor can take"},
		{"corrupt weights", []string{"--input", good, "--weights", write("w.safetensors", []byte("\x08\x00\x00\x00\x00\x00\x00\x00{}"))}, "w.safetensors"},
		{"unrelated weights", []string{"--input", good, "--weights", fixtures.Path(t, "fixtures", "blocks", "v4_mixed3a", "weights.safetensors")}, "missing"},
		{"unknown tap", []string{"--input", good, "--tap", "nowhere"}, `no module "nowhere"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(dir, "out-"+strings.ReplaceAll(tc.name, " ", "_")+".npy")
			code, _, errs := kiln(t, append([]string{"run", "tiny", "--output", out}, tc.args...)...)
			if code != 1 || !strings.Contains(errs, tc.want) {
				t.Fatalf("exit %d, stderr:\n%s\nwant exit 1 and %q", code, errs, tc.want)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Fatalf("output file exists after failure")
			}
		})
	}
}
