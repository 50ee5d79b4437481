package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/fixtures"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// writeTimmCheckpoint writes a safetensors file the way
// safetensors.torch.save_file writes a timm state dict: every float tensor
// under its timm name, plus the int64 num_batches_tracked scalars of every
// BatchNorm (which Kiln must ignore).
func writeTimmCheckpoint(t *testing.T, path string, ts map[string]*tensor.Tensor) {
	t.Helper()
	type entry struct {
		Dtype   string   `json:"dtype"`
		Shape   []int    `json:"shape"`
		Offsets [2]int64 `json:"data_offsets"`
	}
	var names []string
	for n := range ts {
		names = append(names, n)
		if strings.HasSuffix(n, ".bn.running_var") {
			names = append(names, strings.TrimSuffix(n, "running_var")+"num_batches_tracked")
		}
	}
	sort.Strings(names)
	header := map[string]any{"__metadata__": map[string]string{"format": "pt"}}
	var data bytes.Buffer
	for _, n := range names {
		begin := int64(data.Len())
		if x, ok := ts[n]; ok {
			for _, v := range x.Data {
				binary.Write(&data, binary.LittleEndian, math.Float32bits(v))
			}
			header[n] = entry{"F32", x.Shape, [2]int64{begin, int64(data.Len())}}
		} else {
			binary.Write(&data, binary.LittleEndian, int64(12345))
			header[n] = entry{"I64", []int{}, [2]int64{begin, int64(data.Len())}}
		}
	}
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	for len(h)%8 != 0 {
		h = append(h, ' ')
	}
	var out bytes.Buffer
	binary.Write(&out, binary.LittleEndian, uint64(len(h)))
	out.Write(h)
	out.Write(data.Bytes())
	if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestTimmCheckpointRuns loads a timm-style Inception-v4 checkpoint (names
// unchanged, num_batches_tracked included) with kiln run and checks the logits
// against the PyTorch fixture.
func TestTimmCheckpointRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a 171 MB checkpoint; skipped with -short")
	}
	g, err := dsl.LoadFile("inception_v4.kiln", dsl.Options{Batch: 1, FS: archs.FS})
	if err != nil {
		t.Fatal(err)
	}
	ws, err := g.GeneratedParams()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ckpt := filepath.Join(dir, "inception_v4.safetensors")
	writeTimmCheckpoint(t, ckpt, ws)
	out := filepath.Join(dir, "logits.npy")
	input := fixtures.Path(t, "fixtures", "inception_v4", "input.npy")
	code, stdout, stderr := kiln(t, "run", "inception_v4", "--weights", ckpt, "--input", input, "--output", out)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	got, err := tensor.ReadNPYFile(out)
	if err != nil {
		t.Fatal(err)
	}
	want, err := tensor.ReadNPYFile(fixtures.Path(t, "fixtures", "inception_v4", "logits.npy"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := tensor.MaxAbsDiff(got, want)
	if err != nil {
		t.Fatal(err)
	}
	if rel := d / tensor.MaxAbs(want); !(rel <= 1e-4) {
		t.Fatalf("logits differ from timm by %.3g x max|ref|", rel)
	}
	// A checkpoint with one tensor renamed and one mis-shaped is refused with
	// both names in the error.
	ws["features.0.conv.weightx"] = ws["features.0.conv.weight"]
	delete(ws, "features.0.conv.weight")
	ws["last_linear.bias"] = tensor.New(999)
	writeTimmCheckpoint(t, ckpt, ws)
	code, _, stderr = kiln(t, "run", "inception_v4", "--weights", ckpt, "--input", input, "--output", filepath.Join(dir, "bad.npy"))
	for _, want := range []string{"features.0.conv.weight", "features.0.conv.weightx", "last_linear.bias"} {
		if code != 1 || !strings.Contains(stderr, want) {
			t.Errorf("exit %d, stderr lacks %q:\n%s", code, want, stderr)
		}
	}
}
