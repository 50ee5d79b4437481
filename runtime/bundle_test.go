package rt

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// batch2Manifest is testManifest claiming batch 2; batch2Lib is the test
// library compiled for its arena (its kernels still compute one sample).
func batch2Manifest() Manifest {
	m := testManifest()
	m.Batch = 2
	m.ArenaBytes = 4 * (2*testN + 2*(testN+1))
	m.Input.Shape = []int{2, testN}
	m.Output.Shape = []int{2, testN + 1}
	return m
}

func batch2Lib(t *testing.T) []byte {
	so, err := os.ReadFile(buildLib(t, fmt.Sprintf("-DARENA_BYTES=%d", batch2Manifest().ArenaBytes)))
	if err != nil {
		t.Fatal(err)
	}
	return so
}

func writeBundle(t *testing.T, progs []Program) string {
	t.Helper()
	var buf bytes.Buffer
	if err := AppendPayloadMulti(&buf, bytes.NewReader(markedExe()), progs, testWeights()); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "net")
	if err := os.WriteFile(p, buf.Bytes(), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBundleRoundTrip writes two programs as payload format 3 and reads
// them back: one weights section, each shared object and manifest with its
// checksums; FindPayload says to use FindBundle. Both programs open, each
// with its own shared object although both are loaded from memory files
// (glibc's dlopen returns a loaded library of the same name, and a closed
// memfd's /proc/self/fd/N name is reused: the first one's must stay open).
// A program whose shared object is not its own is refused naming it.
func TestBundleRoundTrip(t *testing.T) {
	so, err := os.ReadFile(buildLib(t))
	if err != nil {
		t.Fatal(err)
	}
	so2 := batch2Lib(t)
	p := writeBundle(t, []Program{{testManifest(), so}, {batch2Manifest(), so2}})
	b, found, err := FindBundle(p)
	if err != nil || !found {
		t.Fatalf("FindBundle: %v, %v", found, err)
	}
	defer b.Close()
	if got := b.Batches(); len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("batches %v", got)
	}
	for i, a := range b.Artifacts {
		if !bytes.Equal(a.Weights, testWeights()) || a.Manifest.Checksums == nil {
			t.Errorf("program %d: weights or checksums wrong", i+1)
		}
	}
	if &b.Artifacts[0].Weights[0] != &b.Artifacts[1].Weights[0] {
		t.Error("the programs do not share one weights mapping")
	}
	if !bytes.Equal(b.Artifacts[1].SharedObject, so2) {
		t.Error("second shared object differs")
	}
	_, found, err = FindPayload(p)
	if !found {
		t.Error("FindPayload: not found")
	}
	wantErr(t, err, "open it with rt.FindBundle")
	mm, err := OpenMulti(b, Options{Threads: 1})
	if err != nil {
		t.Fatalf("OpenMulti: %v", err)
	}
	if mm.Model(2).Manifest().ArenaBytes != batch2Manifest().ArenaBytes || mm.Pick(2) != 2 || mm.Pick(1) != 1 || mm.Pick(7) != 2 {
		t.Error("programs or Pick wrong")
	}
	out := make([]float32, testN+1)
	if err := mm.Run(testInput(1), out); err != nil {
		t.Fatal(err)
	}
	checkOutput(t, testInput(1), out, mm.Largest().ISA())
	mm.Close()

	p = writeBundle(t, []Program{{testManifest(), so}, {batch2Manifest(), so}})
	b2, _, err := FindBundle(p)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	_, err = OpenMulti(b2, Options{Threads: 1})
	wantErr(t, err, "program 2 of 2 (batch 2): open artifact \"tiny\": manifest arena_bytes")
}

// TestBundleFormat2 reads a format-2 payload as a bundle of one and runs
// several samples through it: each chunk of the batch-1 program gives the
// same rows as running them one by one.
func TestBundleFormat2(t *testing.T) {
	path, _ := writePayloadExe(t, markedExe())
	b, found, err := FindBundle(path)
	if err != nil || !found || len(b.Artifacts) != 1 {
		t.Fatalf("FindBundle: %v, %v", found, err)
	}
	defer b.Close()
	mm, err := OpenMulti(b, Options{Threads: 2, CopyWeights: true})
	if err != nil {
		t.Fatal(err)
	}
	defer mm.Close()
	if mm.InRow() != testN || mm.OutRow() != testN+1 || mm.Pick(3) != 1 {
		t.Fatalf("rows %d, %d, pick %d", mm.InRow(), mm.OutRow(), mm.Pick(3))
	}
	var in []float32
	for s := range 3 {
		in = append(in, testInput(s)...)
	}
	out := make([]float32, 3*(testN+1))
	if err := mm.Run(in, out); err != nil {
		t.Fatal(err)
	}
	for s := range 3 {
		checkOutput(t, in[s*testN:(s+1)*testN], out[s*(testN+1):(s+1)*(testN+1)], mm.Largest().ISA())
	}
	wantErr(t, mm.Run(in[:testN+1], out), "want a positive multiple of")
	wantErr(t, mm.Run(in, out[:5]), "output has 5 floats")
}

// TestBundleRefused: programs that cannot share a payload, and damage to
// each part of a format-3 payload, are refused naming the part.
func TestBundleRefused(t *testing.T) {
	so, err := os.ReadFile(buildLib(t))
	if err != nil {
		t.Fatal(err)
	}
	other := batch2Manifest()
	other.Input.Shape = []int{2, testN - 1}
	fewer := batch2Manifest()
	fewer.WeightsBytes -= 4
	for _, c := range []struct {
		name  string
		progs []Program
		want  string
	}{
		{"descending", []Program{{batch2Manifest(), so}, {testManifest(), so}}, "batch 1 after batch 2"},
		{"same batch", []Program{{testManifest(), so}, {testManifest(), so}}, "batch 1 after batch 1"},
		{"other sample shape", []Program{{testManifest(), so}, {other, so}}, "do not match program 1's"},
		{"other weights size", []Program{{testManifest(), so}, {fewer, so}}, "the weights must be shared"},
		{"not ELF", []Program{{testManifest(), so}, {batch2Manifest(), []byte("nope")}}, "program 2 (batch 2): the shared object is not an ELF file"},
	} {
		err := AppendPayloadMulti(&bytes.Buffer{}, strings.NewReader("exe"), c.progs, testWeights())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}

	p := writeBundle(t, []Program{{testManifest(), so}, {batch2Manifest(), so}})
	good, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	n := len(good)
	tr := good[n-bundleTrailerSize:]
	iOff := int(binary.LittleEndian.Uint64(tr[24:]))
	for _, c := range []struct {
		name string
		edit func([]byte) []byte
		want string
	}{
		{"index byte", func(b []byte) []byte { b[iOff+10] ^= 1; return b }, "the index (manifests) is damaged"},
		{"trailer offset", func(b []byte) []byte { b[n-bundleTrailerSize+9] ^= 1; return b }, "the trailer is damaged"},
		{"trailer magic", func(b []byte) []byte { b[n-bundleTrailerSize+1] = 'x'; return b }, "the trailer's magic"},
		{"truncated", func(b []byte) []byte { return b[:n-100] }, "truncated, or run through strip"},
		{"bytes appended", func(b []byte) []byte { return append(b, "junk!"...) }, "5 unexpected bytes follow the trailer"},
		{"trailer cut", func(b []byte) []byte { return b[:n-3] }, "cut short by 3 bytes"},
	} {
		q := filepath.Join(t.TempDir(), "net")
		if err := os.WriteFile(q, c.edit(bytes.Clone(good)), 0o755); err != nil {
			t.Fatal(err)
		}
		_, found, err := FindBundle(q)
		if !found || err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: found=%v, %v, want %q", c.name, found, err, c.want)
		}
	}
}
