package rt

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// TestManifestDTypeRoundTrip checks ParseManifest(json(m)) == m for input
// and output tensors of every dtype, and that offsets count elements of the
// tensor's dtype.
func TestManifestDTypeRoundTrip(t *testing.T) {
	for _, dt := range []string{"", "f32", "bf16", "f16", "i8"} {
		m := testManifest()
		m.Input.DType, m.Output.DType = dt, dt
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseManifest(b)
		if err != nil {
			t.Fatalf("dtype %q: %v\n%s", dt, err, b)
		}
		if !reflect.DeepEqual(*back, m) {
			t.Fatalf("dtype %q: round trip differs:\n got %+v\nwant %+v", dt, *back, m)
		}
		size := map[string]int64{"": 4, "f32": 4, "bf16": 2, "f16": 2, "i8": 1}[dt]
		if got := back.Output.ByteOffset(); got != back.Output.Offset*size {
			t.Errorf("dtype %q: ByteOffset %d, want %d", dt, got, back.Output.Offset*size)
		}
	}
	// An element offset past the f32 arena fits when elements are 2 bytes.
	m := testManifest()
	m.Output.Offset = m.ArenaBytes/4 - 1
	if err := m.Validate(); err == nil {
		t.Error("f32 output past the arena accepted")
	}
	m.Output.DType = "bf16"
	m.Output.Offset = m.ArenaBytes/2 - int64(testN+1)
	if err := m.Validate(); err != nil {
		t.Errorf("bf16 output inside the arena refused: %v", err)
	}
	m.Output.DType = "f64"
	if err := m.Validate(); err == nil || !strings.Contains(err.Error(), `unknown dtype "f64"`) {
		t.Errorf("dtype f64: got %v", err)
	}
}
