package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	rt "github.com/kiln-dev/kiln/runtime"
)

// TestDefaultLabels checks issue 11 item 9: kiln build gives the built-in
// ImageNet networks ImageNet's 1000 class names (archs/labels) unless
// --labels names others, and gives no names to other networks.
func TestDefaultLabels(t *testing.T) {
	file := filepath.Join(t.TempDir(), "l.txt")
	if err := os.WriteFile(file, []byte(strings.Repeat("x\n", 1000)), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		network string
		out     []int
		flag    string
		first   string // "" = no labels
	}{
		{"inception_v4", []int{1, 1000}, "", "tench"},
		{"inception_resnet_v2", []int{8, 1000}, "", "tench"},
		{"inception_resnet_v1", []int{1, 1000}, "", "tench"},
		{"inception_v4", []int{1, 1000}, file, "x"},
		{"tiny", []int{1, 10}, "", ""},
		{"my_net", []int{1, 1000}, "", ""},
		{"inception_v4", []int{1, 10}, "", ""}, // not the built-in's output
	}
	for _, tc := range tests {
		m := rt.Manifest{Network: tc.network, Output: rt.TensorInfo{Shape: tc.out}}
		f := imageFlags{labels: tc.flag}
		if err := f.apply(&m, []int{tc.out[0], 3, 299, 299}); err != nil {
			t.Fatalf("%s: %v", tc.network, err)
		}
		got := ""
		if len(m.Labels) > 0 {
			got = m.Labels[0]
			if len(m.Labels) != 1000 {
				t.Errorf("%s: %d labels, want 1000", tc.network, len(m.Labels))
			}
		}
		if got != tc.first {
			t.Errorf("%s %v --labels %q: first label %q, want %q", tc.network, tc.out, tc.flag, got, tc.first)
		}
	}
}
