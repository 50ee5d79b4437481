package rt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// writePayloadExe appends the test artifact to exe and writes the result to
// a new executable file, returning its path and the shared object's bytes.
func writePayloadExe(t *testing.T, exe []byte) (string, []byte) {
	t.Helper()
	so, err := os.ReadFile(buildLib(t))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := AppendPayload(&buf, bytes.NewReader(exe), so, bytes.NewReader(testWeights()), testManifest()); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "net")
	if err := os.WriteFile(path, buf.Bytes(), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, so
}

func TestPayloadRoundTrip(t *testing.T) {
	exe := make([]byte, 10007)
	for i := range exe {
		exe[i] = byte(rand.IntN(256))
	}
	path, so := writePayloadExe(t, exe)
	a, found, err := FindPayload(path)
	if err != nil || !found {
		t.Fatalf("FindPayload: %v, found=%v", err, found)
	}
	defer a.Close()
	if !bytes.Equal(a.SharedObject, so) {
		t.Error("shared object differs")
	}
	if !bytes.Equal(a.Weights, testWeights()) {
		t.Error("weights differ")
	}
	if a.mapping == nil {
		t.Error("weights were not mapped from the file")
	}
	raw, _ := os.ReadFile(path)
	if !bytes.Equal(raw[:len(exe)], exe) {
		t.Error("executable bytes changed")
	}
	want := testManifest()
	if a.Manifest.Network != want.Network || a.Manifest.ArenaBytes != want.ArenaBytes || len(a.Manifest.Kernels) != 2 ||
		a.Manifest.Output.Offset != want.Output.Offset {
		t.Errorf("manifest = %+v", a.Manifest)
	}
	m := mustOpen(t, *a, Options{Threads: 2})
	runOnce(t, m, 3)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}

	// Plain executables have no payload.
	_, found, err = FindPayload(filepath.Join(t.TempDir(), "missing"))
	if err == nil {
		t.Error("FindPayload of a missing file: no error")
	}
	plain := filepath.Join(t.TempDir(), "plain")
	os.WriteFile(plain, exe, 0o755)
	if a, found, err := FindPayload(plain); a != nil || found || err != nil {
		t.Errorf("plain file: %v, %v, %v", a, found, err)
	}
	// Nor does this test binary, although it contains the magic string.
	if a, found, err := FindPayload(""); a != nil || found || err != nil {
		t.Errorf("test binary: %v, %v, %v", a, found, err)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, nil, 0o755)
	if a, found, err := FindPayload(empty); a != nil || found || err != nil {
		t.Errorf("empty file: %v, %v, %v", a, found, err)
	}
}

func TestPayloadZeroWeights(t *testing.T) {
	so, err := os.ReadFile(buildLib(t))
	if err != nil {
		t.Fatal(err)
	}
	man := testManifest()
	man.WeightsBytes = 0
	var buf bytes.Buffer
	if err := AppendPayload(&buf, strings.NewReader("exe"), so, bytes.NewReader(nil), man); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "net")
	os.WriteFile(path, buf.Bytes(), 0o755)
	a, found, err := FindPayload(path)
	if err != nil || !found || len(a.Weights) != 0 || a.Manifest.WeightsBytes != 0 {
		t.Fatalf("FindPayload: %v, %v, %v", a, found, err)
	}
	a.Close()
}

func TestPayloadCorrupt(t *testing.T) {
	exe := bytes.Repeat([]byte("EXE!"), 3000)
	path, _ := writePayloadExe(t, exe)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	size := len(good)
	trailer := size - payloadTrailerSize
	field := func(i int) int { return trailer + 8 + 8*i } // 0: so off, 1: so size, 2: w off, ...
	get := func(b []byte, i int) uint64 { return binary.LittleEndian.Uint64(b[field(i):]) }
	put := func(b []byte, i int, v uint64) { binary.LittleEndian.PutUint64(b[field(i):], v) }
	cases := []struct {
		name string
		edit func([]byte) []byte
		want string // "" means: no payload found, no error
	}{
		{"truncated trailer", func(b []byte) []byte { return b[:size-10] }, "is cut short by 10 bytes (truncated file?)"},
		{"bytes appended", func(b []byte) []byte { return append(b, "signature"...) }, "9 unexpected bytes follow the trailer"},
		{"magic damaged", func(b []byte) []byte { b[trailer] = 'X'; return b }, ""},
		{"truncated mid-weights", func(b []byte) []byte { return b[:int(get(b, 2))+100] }, ""},
		{"weights beyond file", func(b []byte) []byte { put(b, 3, 1<<40); return b }, "weights section"},
		{"huge offset", func(b []byte) []byte { put(b, 0, 1<<63); return b }, "lies outside"},
		{"misaligned", func(b []byte) []byte { put(b, 2, get(b, 2)+4); return b }, "not 4096-aligned"},
		{"overlap", func(b []byte) []byte { put(b, 2, get(b, 0)); return b }, "overlaps the previous section"},
		{"gap before trailer", func(b []byte) []byte { put(b, 5, get(b, 5)-1); return b }, "the manifest ends at"},
		{"manifest garbage", func(b []byte) []byte { b[get(b, 4)] = '['; return b }, "corrupt kiln payload: manifest:"},
		{"weights size mismatch", func(b []byte) []byte { put(b, 3, get(b, 3)-4); return b }, "the weights section is 3996 bytes, the manifest says 4000"},
		{"not ELF", func(b []byte) []byte { b[get(b, 0)] = 0; return b }, "the shared object section is not an ELF file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := c.edit(bytes.Clone(good))
			p := filepath.Join(t.TempDir(), "net")
			if err := os.WriteFile(p, b, 0o755); err != nil {
				t.Fatal(err)
			}
			a, found, err := FindPayload(p)
			if c.want == "" {
				if a != nil || found || err != nil {
					t.Fatalf("got %v, %v, %v; want no payload", a, found, err)
				}
				return
			}
			if a != nil || !found {
				t.Fatalf("got %v, found=%v", a, found)
			}
			wantErr(t, err, c.want)
			wantErr(t, err, "corrupt kiln payload")
		})
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

func TestAppendPayloadErrors(t *testing.T) {
	so, err := os.ReadFile(buildLib(t))
	if err != nil {
		t.Fatal(err)
	}
	w := testWeights()
	man := testManifest()
	cases := []struct {
		name    string
		so      []byte
		weights io.Reader
		man     Manifest
		want    string
	}{
		{"short weights", so, bytes.NewReader(w[:10]), man, "append payload: weights are 10 bytes, the manifest says 4000"},
		{"long weights", so, io.MultiReader(bytes.NewReader(w), strings.NewReader("x")), man, "weights are longer than the 4000 bytes the manifest says"},
		{"weights error", so, errReader{}, man, "copy weights: disk on fire"},
		{"not ELF", []byte("MZ"), bytes.NewReader(w), man, "the shared object is not an ELF file"},
		{"bad manifest", so, bytes.NewReader(w), Manifest{}, "append payload: manifest: version 0"},
	}
	for _, c := range cases {
		err := AppendPayload(io.Discard, strings.NewReader("exe"), c.so, c.weights, c.man)
		wantErr(t, err, c.want)
	}
}

// TestPayloadSelfExecutable appends the artifact to a copy of this test
// binary, runs it, and has it find, load and run its own payload through
// os.Executable (see payloadChild).
func TestPayloadSelfExecutable(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	path, _ := writePayloadExe(t, exe)
	cmd := exec.Command(path, "-test.run=^$")
	cmd.Env = append(os.Environ(), "KILN_RT_PAYLOAD_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "payload child: ok") {
		t.Fatalf("child: %v\n%s", err, out)
	}
	t.Logf("%s", bytes.TrimSpace(out))
}

// payloadChild runs in the executable built by TestPayloadSelfExecutable.
func payloadChild() int {
	fail := func(err error) int {
		os.Stderr.WriteString("payload child: " + err.Error() + "\n")
		return 1
	}
	a, found, err := FindPayload("")
	if err != nil {
		return fail(err)
	}
	if !found {
		return fail(errors.New("no payload found"))
	}
	m, err := Open(*a)
	if err != nil {
		return fail(err)
	}
	in, out := testInput(11), make([]float32, testN+1)
	if err := m.Run(in, out); err != nil {
		return fail(err)
	}
	for i := range testN {
		if want := 2*in[testN-1-i] + 0.5*float32(i); out[i] != want {
			return fail(errors.New("wrong output"))
		}
	}
	if err := m.Close(); err != nil {
		return fail(err)
	}
	if err := a.Close(); err != nil {
		return fail(err)
	}
	os.Stdout.WriteString("payload child: ok (isa " + m.ISA() + ", weights mapped from the executable)\n")
	return 0
}
