package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	rt "github.com/kiln-dev/kiln/runtime"
)

// TestVersionCommand: kiln version names kiln's version, Go's and LLVM's
// (or says LLVM is missing).
func TestVersionCommand(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"version"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	for _, want := range []string{"kiln ", "go: go", "llvm: "} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("kiln version output lacks %q:\n%s", want, stdout.String())
		}
	}
}

// TestImageFlags: kiln build's --labels/--mean/--std/--crop-pct/--size set
// the manifest's image path, and bad values are refused naming the flag.
func TestImageFlags(t *testing.T) {
	dir := t.TempDir()
	labels := filepath.Join(dir, "labels.txt")
	if err := os.WriteFile(labels, []byte("cat\ndog\nbird\n\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	newMan := func() *rt.Manifest {
		return &rt.Manifest{Output: rt.TensorInfo{Shape: []int{1, 3}}, Preprocess: preprocessFor("x", []int{1, 3, 32, 32})}
	}
	for _, tc := range []struct {
		name string
		f    imageFlags
		want string // error substring; "" for success
	}{
		{"all set", imageFlags{labels: labels, mean: "0.485,0.456,0.406", std: "0.229,0.224,0.225", cropPct: 0.9, size: 32}, ""},
		{"bad mean", imageFlags{mean: "1,2"}, "--mean"},
		{"zero std", imageFlags{std: "1,0,1"}, "--std"},
		{"crop over 1", imageFlags{cropPct: 1.5}, "--crop-pct"},
		{"size mismatch", imageFlags{size: 299}, "--size 299"},
		{"labels count", imageFlags{labels: labels}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMan()
			err := tc.f.apply(m, []int{1, 3, 32, 32})
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Labels) != 3 || m.Labels[2] != "bird" {
				if tc.f.labels != "" {
					t.Errorf("labels = %q", m.Labels)
				}
			}
			if tc.f.mean != "" && (m.Preprocess.Mean[0] != 0.485 || m.Preprocess.Std[2] != 0.225 || m.Preprocess.CropPct != 0.9) {
				t.Errorf("preprocess = %+v", *m.Preprocess)
			}
		})
	}
	m := newMan()
	m.Output.Shape = []int{1, 10}
	if err := (&imageFlags{labels: labels}).apply(m, []int{1, 3, 32, 32}); err == nil || !strings.Contains(err.Error(), "3 names, the network has 10 outputs") {
		t.Errorf("label count mismatch: err = %v", err)
	}
}
