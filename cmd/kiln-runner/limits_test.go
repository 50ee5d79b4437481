package main

import (
	"bytes"
	"strings"
	"testing"

	rt "github.com/kiln-dev/kiln/runtime"
)

// TestCapThreads: --threads is capped at threadsFactor × CPUs with a
// message (issue 11: --threads 4096 on 2 cores took over a minute).
func TestCapThreads(t *testing.T) {
	for _, tc := range []struct {
		n, cpus, want int
		msg           bool
	}{
		{0, 2, 0, false},
		{8, 2, 8, false},
		{4096, 2, 8, true},
		{9, 2, 8, true},
		{3, 0, 3, false},
	} {
		got, msg := capThreads(tc.n, tc.cpus)
		if got != tc.want || (msg != "") != tc.msg {
			t.Errorf("capThreads(%d, %d) = %d, %q; want %d, message %v", tc.n, tc.cpus, got, msg, tc.want, tc.msg)
		}
	}
}

// TestPrintInfo: --info prints the build record, the targets, shapes,
// preprocessing and labels.
func TestPrintInfo(t *testing.T) {
	man := &rt.Manifest{Network: "tiny", Batch: 2, Arch: "amd64", ISAs: []string{"avx512", "avx2"},
		Input:      rt.TensorInfo{Name: "image", Shape: []int{2, 3, 32, 32}},
		Output:     rt.TensorInfo{Name: "probs", Shape: []int{2, 10}},
		Preprocess: &rt.Preprocess{Size: 32, CropPct: 0.875, Mean: [3]float64{0.5, 0.5, 0.5}, Std: [3]float64{0.5, 0.5, 0.5}, Interpolation: "bicubic"},
		Labels:     []string{"zero"},
		Build:      &rt.BuildInfo{KilnVersion: "v1.2.3", Source: "tiny", SourceHash: "abc", Procedural: true}}
	var b bytes.Buffer
	printInfo(&b, man)
	for _, want := range []string{"network:      tiny", "kiln v1.2.3", "sha256:abc", "procedural", "ISAs avx512, avx2", "batch:        2",
		"image 2x3x32x32", "probs 2x10", "crop_pct 0.875", "labels:       1 (zero"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("--info output lacks %q:\n%s", want, b.String())
		}
	}
}
