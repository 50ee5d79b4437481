package labels

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/internal/testenv"
)

// TestImageNet checks the embedded names: 1000, unique, one line each,
// and spot checks of well-known indices.
func TestImageNet(t *testing.T) {
	names := ImageNet()
	if len(names) != 1000 {
		t.Fatalf("%d names, want 1000", len(names))
	}
	seen := map[string]int{}
	for i, n := range names {
		if n == "" {
			t.Errorf("name %d is empty", i)
		}
		if j, dup := seen[n]; dup {
			t.Errorf("name %q at %d and %d", n, j, i)
		}
		seen[n] = i
	}
	for _, c := range []struct {
		i    int
		name string
	}{{0, "tench"}, {1, "goldfish"}, {281, "tabby"}, {999, "toilet tissue"}} {
		if names[c.i] != c.name {
			t.Errorf("class %d is %q, want %q", c.i, names[c.i], c.name)
		}
	}
}

// TestGeneratorReproducesFile runs gen_imagenet_labels.sh on the installed
// python3-torchvision and requires its output to equal the committed
// imagenet.txt byte for byte. Without python3 or torchvision it goes through
// testenv (a skip, or a failure under KILN_REQUIRE_TOOLS=1 where CI
// installs python3-torchvision).
func TestGeneratorReproducesFile(t *testing.T) {
	testenv.LookPath(t, "python3")
	meta := os.Getenv("KILN_TORCHVISION_META")
	if meta == "" {
		meta = "/usr/lib/python3/dist-packages/torchvision/models/_meta.py"
	}
	if _, err := os.Stat(meta); err != nil {
		testenv.Missing(t, "torchvision's %s (python3-torchvision): %v", meta, err)
	}
	out := filepath.Join(t.TempDir(), "imagenet.txt")
	if b, err := exec.Command("sh", "gen_imagenet_labels.sh", meta, out).CombinedOutput(); err != nil {
		t.Fatalf("gen_imagenet_labels.sh: %v\n%s", err, b)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != imagenet {
		t.Errorf("gen_imagenet_labels.sh writes %d bytes that differ from the committed imagenet.txt (%d bytes): run go generate ./archs/labels", len(got), len(imagenet))
	}
}
