package tensor

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/fixtures"
)

// fixtureDir returns shared/fixtures; it fails the test if it is missing.
func fixtureDir(t testing.TB) string {
	t.Helper()
	return fixtures.Path(t, "fixtures")
}

func loadJSON(t testing.TB, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// blockDirs returns the tags of all blocks/<tag> folders, sorted.
func blockDirs(t testing.TB) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(fixtureDir(t), "blocks", "*", "tensors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var tags []string
	for _, p := range m {
		tags = append(tags, filepath.Base(filepath.Dir(p)))
	}
	sort.Strings(tags)
	if len(tags) != 15 {
		t.Fatalf("found %d block fixtures, want 15: %v", len(tags), tags)
	}
	return tags
}

// tensorsJSON is the layout of a fixture tensors.json file.
type tensorsJSON struct {
	Tensors []struct {
		Name      string   `json:"name"`
		Shape     []int    `json:"shape"`
		Kind      string   `json:"kind"`
		SHA256    string   `json:"sha256_f32le"`
		FirstBits []string `json:"first_f32_bits"`
		FanIn     *int     `json:"fan_in"`
	} `json:"tensors"`
}

func sha256F32LE(data []float32) string {
	h := sha256.New()
	buf := make([]byte, 0, 4<<14)
	for len(data) > 0 {
		n := min(len(data), 1<<14)
		buf = buf[:0]
		for _, v := range data[:n] {
			buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
		}
		h.Write(buf)
		data = data[n:]
	}
	return hex.EncodeToString(h.Sum(nil))
}

func parseHex(t testing.TB, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return v
}

// firstBitDiff returns the first index where a and b differ bitwise, or -1.
func firstBitDiff(a, b []float32) int {
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i
		}
	}
	return -1
}

// requireSameTensor fails unless got and want have equal shapes and
// bit-identical data.
func requireSameTensor(t testing.TB, what string, got, want *Tensor) {
	t.Helper()
	if !shapeEqual(got.Shape, want.Shape) {
		t.Errorf("%s: shape %s, want %s", what, ShapeString(got.Shape), ShapeString(want.Shape))
		return
	}
	if i := firstBitDiff(got.Data, want.Data); i >= 0 {
		if i >= len(got.Data) || i >= len(want.Data) {
			t.Errorf("%s: %d values, want %d", what, len(got.Data), len(want.Data))
			return
		}
		t.Errorf("%s: first difference at index %d: got %v (0x%08x), want %v (0x%08x)", what, i,
			got.Data[i], math.Float32bits(got.Data[i]), want.Data[i], math.Float32bits(want.Data[i]))
	}
}

func wantErrContains(t testing.TB, err error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("got no error, want one mentioning %q", subs)
		return
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
}
