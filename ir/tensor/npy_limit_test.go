package tensor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadNPYFileLimit: --input reads are bounded by the tensor's size
// (issue 11: `--input /dev/zero` read without limit).
func TestReadNPYFileLimit(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "x.npy")
	if err := WriteNPYFile(small, &Tensor{Shape: []int{2, 3}, Data: make([]float32, 6)}); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.npy")
	if err := WriteNPYFile(big, &Tensor{Shape: []int{20000}, Data: make([]float32, 20000)}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path, want string }{
		{"fits", small, ""},
		{"device", "/dev/zero", "a device or socket, not a file"},
		{"directory", dir, "is a directory"},
		{"too large", big, "more than the"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := os.Stat(tc.path); err != nil {
				t.Fatal(err)
			}
			_, err := ReadNPYFileLimit(tc.path, NPYLimit(6))
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
				t.Fatalf("err = %v, want %q naming %s", err, tc.want, tc.path)
			}
		})
	}
}
