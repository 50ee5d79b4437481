package cuda

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writePayload(t *testing.T, exe []byte, external bool) (string, *Program) {
	t.Helper()
	p, w := testProgram(16)
	p.Weights = w
	var buf bytes.Buffer
	var r *bytes.Reader
	if exe != nil {
		r = bytes.NewReader(exe)
	}
	var err error
	if r != nil {
		err = AppendPayload(&buf, r, Manifest{Network: "test"}, p, external)
	} else {
		err = AppendPayload(&buf, nil, Manifest{Network: "test"}, p, external)
	}
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "net")
	if err := os.WriteFile(path, buf.Bytes(), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, p
}

func TestPayloadRoundTrip(t *testing.T) {
	for _, exe := range [][]byte{nil, []byte("\x7fELF pretend executable")} {
		path, p := writePayload(t, exe, false)
		a, found, err := FindPayload(path)
		if err != nil || !found {
			t.Fatalf("FindPayload: found %v, %v", found, err)
		}
		got := a.Program()
		if got.PTX != p.PTX || !bytes.Equal(got.Weights, p.Weights) || len(got.Launches) != 2 || got.Launches[1].Args[1].Kind != ArgWeights || a.Manifest.Network != "test" {
			t.Errorf("round trip differs: %+v", got)
		}
		// The artifact runs.
		f := NewFake()
		f.Exec = testExec
		m, err := Open(f, got, got.Weights, Options{})
		if err != nil {
			t.Fatal(err)
		}
		y := make([]float32, 16)
		if err := m.Run(make([]float32, 16), y); err != nil || y[0] != 2 {
			t.Errorf("run: y[0] = %v, %v", y[0], err)
		}
		m.Close()
	}
}

func TestPayloadExternalWeights(t *testing.T) {
	path, p := writePayload(t, nil, true)
	a, found, err := FindPayload(path)
	if err != nil || !found {
		t.Fatalf("FindPayload: found %v, %v", found, err)
	}
	if a.Weights != nil || !a.Manifest.WeightsExternal {
		t.Fatal("external weights were stored")
	}
	bad := bytes.Clone(p.Weights)
	bad[3] ^= 1
	if err := a.SetWeights(bad, "w.bin"); err == nil || !strings.Contains(err.Error(), "w.bin: SHA-256") {
		t.Errorf("SetWeights(damaged) = %v", err)
	}
	if err := a.SetWeights(p.Weights[:8], "w.bin"); err == nil || !strings.Contains(err.Error(), "8 bytes") {
		t.Errorf("SetWeights(short) = %v", err)
	}
	if err := a.SetWeights(p.Weights, "w.bin"); err != nil {
		t.Fatal(err)
	}
}

func TestPayloadDamage(t *testing.T) {
	path, p := writePayload(t, []byte("\x7fELF exe"), false)
	orig, _ := os.ReadFile(path)
	ptxAt := bytes.Index(orig, []byte(".entry add_one"))
	wAt := int64(2 * gpuAlign) // exe, pad, PTX (< 4096), pad: weights
	jsAt := bytes.Index(orig, []byte(`"network"`))
	tests := []struct {
		name string
		edit func(b []byte) []byte
		want string
	}{
		{"PTX", func(b []byte) []byte { b[ptxAt] ^= 1; return b }, "PTX section is damaged"},
		{"weights", func(b []byte) []byte { b[wAt] ^= 1; return b }, "weights are damaged"},
		{"manifest", func(b []byte) []byte { b[jsAt+2] ^= 1; return b }, "manifest is damaged"},
		{"trailer", func(b []byte) []byte { b[len(b)-20] ^= 1; return b }, "trailer is damaged"},
		{"truncated", func(b []byte) []byte { return append(b[:100:100], b[len(b)-gpuTrailerSize:]...) }, "outside the file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.edit(bytes.Clone(orig))
			q := filepath.Join(t.TempDir(), "bad")
			os.WriteFile(q, b, 0o755)
			_, found, err := FindPayload(q)
			if !found || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("FindPayload: found %v, err %v; want %q", found, err, tc.want)
			}
		})
	}
	_ = p
	// A file without a GPU payload is not an error.
	q := filepath.Join(t.TempDir(), "plain")
	os.WriteFile(q, bytes.Repeat([]byte("x"), 500), 0o755)
	if _, found, err := FindPayload(q); found || err != nil {
		t.Errorf("plain file: found %v, %v", found, err)
	}
}
