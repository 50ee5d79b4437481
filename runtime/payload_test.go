package rt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
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

// markedExe is a stand-in executable carrying the runtime's payload marker,
// as every kiln runner does.
func markedExe() []byte {
	exe := bytes.Repeat([]byte("EXE!"), 3000)
	return append(append(exe, markPattern('0')...), "rest"...)
}

// TestPayloadCorrupt damages a built payload in every way issue 11 lists
// (and more): each is refused with a message naming the part, never read as
// "no payload" (which made the executable fall back to a usage error).
func TestPayloadCorrupt(t *testing.T) {
	exe := markedExe()
	path, _ := writePayloadExe(t, exe)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	size := len(good)
	trailer := size - payloadTrailerSize
	field := func(i int) int { return trailer + 8 + 8*i } // 0: so off, 1: so size, 2: w off, ...
	get := func(b []byte, i int) uint64 { return binary.LittleEndian.Uint64(b[field(i):]) }
	// put edits a trailer field and reseals the trailer, as a deliberate
	// edit would, so that the structural checks behind the self-check are
	// reached.
	put := func(b []byte, i int, v uint64) {
		binary.LittleEndian.PutUint64(b[field(i):], v)
		copy(b[trailer+trailerSumAt:], trailerSum(b[trailer:]))
	}
	// editManifest replaces old by new in the manifest JSON, keeping its
	// length, and leaves the trailer's digest as it was.
	editManifest := func(old, new string) func([]byte) []byte {
		return func(b []byte) []byte {
			man := b[get(b, 4) : get(b, 4)+get(b, 5)]
			i := bytes.Index(man, []byte(old))
			if i < 0 || len(old) != len(new) {
				t.Fatalf("manifest %s lacks %q", man, old)
			}
			copy(man[i:], new)
			return b
		}
	}
	cases := []struct {
		name string
		edit func([]byte) []byte
		want string // "" means: no payload found, no error
	}{
		{"truncated trailer", func(b []byte) []byte { return b[:size-10] }, "is cut short by 10 bytes (truncated file?)"},
		{"bytes appended", func(b []byte) []byte { return append(b, "signature"...) }, "9 unexpected bytes follow the trailer"},
		{"magic damaged", func(b []byte) []byte { b[trailer] = 'X'; return b }, `the trailer's magic "XILNPAY2" is damaged`},
		{"magic zeroed", func(b []byte) []byte { clear(b[trailer : trailer+8]); return b }, "is damaged"},
		{"trailer offset flipped", func(b []byte) []byte { b[field(2)] ^= 1; return b }, "the trailer is damaged"},
		{"trailer digest flipped", func(b []byte) []byte { b[trailer+60] ^= 0x10; return b }, "the trailer is damaged"},
		{"truncated mid-weights", func(b []byte) []byte { return b[:int(get(b, 2))+100] }, "the compiled network appended to it is missing"},
		{"truncated to the executable", func(b []byte) []byte { return b[:len(exe)] }, "truncated, or run through strip"},
		{"weights beyond file", func(b []byte) []byte { put(b, 3, 1<<40); return b }, "weights section"},
		{"huge offset", func(b []byte) []byte { put(b, 0, 1<<63); return b }, "lies outside"},
		{"misaligned", func(b []byte) []byte { put(b, 2, get(b, 2)+4); return b }, "not 4096-aligned"},
		{"overlap", func(b []byte) []byte { put(b, 2, get(b, 0)); return b }, "overlaps the previous section"},
		{"gap before trailer", func(b []byte) []byte { put(b, 5, get(b, 5)-1); return b }, "the manifest ends at"},
		{"manifest garbage", func(b []byte) []byte { b[get(b, 4)] = '['; return b }, "the manifest is damaged: its SHA-256 is"},
		// The example: the output offset edited in place.
		{"manifest output offset", editManifest(`"offset":2000`, `"offset":2096`), "the manifest is damaged"},
		{"manifest arena lowered", editManifest(`"arena_bytes":12004`, `"arena_bytes":12000`), "the manifest is damaged"},
		{"weights size mismatch", func(b []byte) []byte { put(b, 3, get(b, 3)-4); return b }, "the weights section is 3996 bytes, the manifest says 4000"},
		{"format 1", func(b []byte) []byte {
			return append(b[:trailer], append([]byte("KILNPAY1"), make([]byte, 48)...)...)
		}, "payload format 1, written by an older kiln"},
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
	// Without the marker (not a kiln runner) a file cut before its
	// trailer is just a file without a payload.
	plain := bytes.Repeat([]byte("EXE!"), 3000)
	path, _ = writePayloadExe(t, plain)
	b, _ := os.ReadFile(path)
	p := filepath.Join(t.TempDir(), "cut")
	os.WriteFile(p, b[:len(plain)+100], 0o755)
	if a, found, err := FindPayload(p); a != nil || found || err != nil {
		t.Fatalf("unmarked cut file: %v, %v, %v; want no payload", a, found, err)
	}
}

// TestPayloadDamagedParts flips bytes of the shared object and the weights
// of a built payload: the trailer and manifest are intact, so FindPayload
// succeeds and Open refuses the part by its digest, before loading the
// library or running a kernel. A NaN written into the weights (the issue's
// all-NaN logits, exit 0) is one such flip. SkipWeightsCheck skips the
// weights' digest only.
func TestPayloadDamagedParts(t *testing.T) {
	path, _ := writePayloadExe(t, markedExe())
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tr := good[len(good)-payloadTrailerSize:]
	soOff := int(binary.LittleEndian.Uint64(tr[8:]))
	soLen := int(binary.LittleEndian.Uint64(tr[16:]))
	wOff := int(binary.LittleEndian.Uint64(tr[24:]))
	nan := math.Float32bits(float32(math.NaN()))
	cases := []struct {
		name     string
		edit     func([]byte)
		skipW    bool
		copyW    bool
		want     string // "" means: opens and runs correctly
		wantSkip string // with SkipWeightsCheck; "" means opens
	}{
		{"one weight byte", func(b []byte) { b[wOff+123] ^= 0x01 }, false, true, "the weights are damaged: their SHA-256 is", ""},
		{"one weight byte, mapped", func(b []byte) { b[wOff+123] ^= 0x01 }, false, false, "the weights are damaged", ""},
		{"NaN weight", func(b []byte) { binary.LittleEndian.PutUint32(b[wOff+8:], nan) }, false, true, "the weights are damaged", ""},
		{"kernel bytes", func(b []byte) { b[soOff+soLen/2] ^= 0xff; b[soOff+soLen/2+1] ^= 0xff }, false, true,
			"the shared object (kernels) is damaged: its SHA-256 is", "the shared object (kernels) is damaged"},
		{"ELF header", func(b []byte) { b[soOff+16] ^= 0x04 }, false, true, "the shared object (kernels) is damaged", "the shared object (kernels) is damaged"},
		{"intact", func([]byte) {}, false, true, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := bytes.Clone(good)
			c.edit(b)
			p := filepath.Join(t.TempDir(), "net")
			if err := os.WriteFile(p, b, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, skip := range []bool{false, true} {
				a, found, err := FindPayload(p)
				if err != nil || !found {
					t.Fatalf("FindPayload: %v, %v", found, err)
				}
				m, err := Open(*a, Options{Threads: 1, CopyWeights: c.copyW, SkipWeightsCheck: skip})
				want := c.want
				if skip {
					want = c.wantSkip
				}
				if want == "" {
					if err != nil {
						t.Fatalf("skip=%v: %v", skip, err)
					}
					m.Close()
				} else {
					wantErr(t, err, want)
					wantErr(t, err, `open artifact "tiny"`)
				}
				a.Close()
			}
		})
	}
}

// TestOpenChecksumsInMemory: an in-memory artifact with checksums is
// verified like a payload's; without them it is trusted.
func TestOpenChecksumsInMemory(t *testing.T) {
	so, err := os.ReadFile(buildLib(t))
	if err != nil {
		t.Fatal(err)
	}
	w := testWeights()
	man := testManifest()
	man.Checksums = &Checksums{SharedObject: sha256Hex(so), Weights: sha256Hex(w)}
	m := mustOpen(t, Artifact{Manifest: man, SharedObject: so, Weights: w}, Options{Threads: 1})
	runOnce(t, m, 1)
	bad := bytes.Clone(w)
	bad[0] ^= 0x80
	_, err = Open(Artifact{Manifest: man, SharedObject: so, Weights: bad}, Options{Threads: 1})
	wantErr(t, err, "the weights are damaged")
	man.Checksums.Weights = "nothex"
	_, err = Open(Artifact{Manifest: man, SharedObject: so, Weights: w}, Options{Threads: 1})
	wantErr(t, err, `manifest: checksums.weights "nothex": want 64 lowercase hexadecimal digits`)
	man.Checksums = nil
	m = mustOpen(t, Artifact{Manifest: man, SharedObject: so, Weights: bad}, Options{Threads: 1})
}

// TestPayloadMarker: AppendPayload sets the marker in the executable it
// copies, once, and refuses an executable whose marker is already set.
func TestPayloadMarker(t *testing.T) {
	so, err := os.ReadFile(buildLib(t))
	if err != nil {
		t.Fatal(err)
	}
	exe := markedExe()
	var buf bytes.Buffer
	if err := AppendPayload(&buf, bytes.NewReader(exe), so, bytes.NewReader(testWeights()), testManifest()); err != nil {
		t.Fatal(err)
	}
	out := buf.Bytes()[:len(exe)]
	if bytes.Contains(out, markPattern('0')) || bytes.Count(out, markPattern('1')) != 1 {
		t.Error("the marker was not set in the copy")
	}
	err = AppendPayload(io.Discard, bytes.NewReader(out), so, bytes.NewReader(testWeights()), testManifest())
	wantErr(t, err, "the executable already carries a compiled network")
	twice := append(bytes.Clone(exe), markPattern('0')...)
	err = AppendPayload(io.Discard, bytes.NewReader(twice), so, bytes.NewReader(testWeights()), testManifest())
	wantErr(t, err, "contains the payload marker 2 times")
	man := testManifest()
	man.Checksums = &Checksums{SharedObject: sha256Hex(so), Weights: sha256Hex(nil)}
	err = AppendPayload(io.Discard, bytes.NewReader(exe), so, bytes.NewReader(testWeights()), man)
	wantErr(t, err, "do not match the shared object and weights given")
	if selfCarriesMark() {
		t.Error("this test binary claims to carry a payload")
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
