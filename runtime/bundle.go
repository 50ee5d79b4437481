package rt

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Payload format 3 carries several compiled programs of one network, one
// per batch size (kiln build --batch 1,8,32), sharing one weights blob:
//
//	[executable][pad][shared object 1][pad]...[shared object K][pad]
//	[weights][pad][index JSON][trailer]
//
// The trailer (bundleTrailerSize bytes) is the magic "KILNPAY3", four
// little-endian uint64 (offset and size of the weights and of the index,
// from the start of the file), the SHA-256 of the index and the first 8
// bytes of the SHA-256 of everything before them in the trailer. The index
// is a JSON object {"format":3,"programs":[{"offset","size","manifest"}]}:
// each program's shared-object section and its manifest, in ascending order
// of batch size; every manifest carries the SHA-256 of its own shared
// object and the (common) SHA-256 of the weights (Manifest.Checksums), so
// each part of the file is covered by one digest: the index by the
// trailer's, each shared object and the weights by the index's manifests.
// The weights are stored once: weight packing depends on the weights and the
// channel block, never on the batch, and kiln build checks that every
// program's blob is byte-identical before writing. A single-batch build
// still writes format 2 (payload.go), which FindBundle reads as a bundle of
// one program.
const (
	bundleMagic       = "KILNPAY3"
	bundleTrailerSize = 8 + 4*8 + 32 + 8
	bundleSumAt       = bundleTrailerSize - 8
	bundleFormat      = 3
	// MaxPrograms bounds the batch sizes one artifact may carry.
	MaxPrograms = 64
)

// Program is one compiled program of a multi-batch artifact: its manifest
// and its shared object.
type Program struct {
	Manifest     Manifest
	SharedObject []byte
}

type bundleIndex struct {
	Format   int           `json:"format"`
	Programs []bundleEntry `json:"programs"`
}

type bundleEntry struct {
	Offset   int64    `json:"offset"`
	Size     int64    `json:"size"`
	Manifest Manifest `json:"manifest"`
}

// Bundle is the artifacts of one standalone executable, one per compiled
// batch size in ascending order, all referring to the same weights.
type Bundle struct {
	Artifacts []Artifact
	mapping   []byte
}

// Batches lists the compiled batch sizes, ascending.
func (b *Bundle) Batches() []int {
	var s []int
	for _, a := range b.Artifacts {
		s = append(s, a.Manifest.Batch)
	}
	return s
}

// Close releases the weights mapping. Close every Model or MultiModel
// opened from the Bundle first.
func (b *Bundle) Close() error {
	var err error
	for i := range b.Artifacts {
		if e := b.Artifacts[i].Close(); e != nil && err == nil {
			err = e
		}
	}
	m := b.mapping
	b.mapping = nil
	if e := unmap(m); e != nil && err == nil {
		err = e
	}
	return err
}

// checkPrograms checks that progs are one network compiled for distinct
// batch sizes in ascending order with the same weights, per-sample shapes,
// target and taps, and returns the weights size.
func checkPrograms(progs []Program) error {
	if len(progs) == 0 || len(progs) > MaxPrograms {
		return fmt.Errorf("%d programs, want 1 to %d", len(progs), MaxPrograms)
	}
	first := &progs[0].Manifest
	for i := range progs {
		m := &progs[i].Manifest
		if err := m.Validate(); err != nil {
			return fmt.Errorf("program %d (batch %d): %w", i+1, m.Batch, err)
		}
		if i == 0 {
			continue
		}
		prev := &progs[i-1].Manifest
		switch {
		case m.Batch <= prev.Batch:
			return fmt.Errorf("program %d: batch %d after batch %d; want distinct batch sizes in ascending order", i+1, m.Batch, prev.Batch)
		case m.Network != first.Network || m.Arch != first.Arch || !equalStrings(m.ISAs, first.ISAs):
			return fmt.Errorf("program %d (batch %d) is %s for %s %v, program 1 is %s for %s %v", i+1, m.Batch, m.Network, m.Arch, m.ISAs, first.Network, first.Arch, first.ISAs)
		case m.WeightsBytes != first.WeightsBytes:
			return fmt.Errorf("program %d (batch %d) has %d bytes of weights, program 1 %d: the weights must be shared", i+1, m.Batch, m.WeightsBytes, first.WeightsBytes)
		case !sameSample(m.Input, first.Input, m.Batch, first.Batch) || !sameSample(m.Output, first.Output, m.Batch, first.Batch):
			return fmt.Errorf("program %d (batch %d): input %v, output %v do not match program 1's %v, %v per sample", i+1, m.Batch, m.Input.Shape, m.Output.Shape, first.Input.Shape, first.Output.Shape)
		case len(m.Taps) != len(first.Taps):
			return fmt.Errorf("program %d (batch %d) has %d taps, program 1 %d", i+1, m.Batch, len(m.Taps), len(first.Taps))
		}
		for j := range m.Taps {
			if m.Taps[j].Name != first.Taps[j].Name || !sameSample(m.Taps[j], first.Taps[j], m.Batch, first.Batch) {
				return fmt.Errorf("program %d (batch %d): tap %q %v does not match program 1's %q %v", i+1, m.Batch, m.Taps[j].Name, m.Taps[j].Shape, first.Taps[j].Name, first.Taps[j].Shape)
			}
		}
	}
	return nil
}

// sameSample reports whether tensors a (of a batch-na program) and b (of a
// batch-nb program) have the same dtype and the same shape apart from a
// leading batch dimension equal to the program's batch.
func sameSample(a, b TensorInfo, na, nb int) bool {
	if a.DType != b.DType || len(a.Shape) != len(b.Shape) || len(a.Shape) == 0 || a.Shape[0] != na || b.Shape[0] != nb {
		return false
	}
	for i := 1; i < len(a.Shape); i++ {
		if a.Shape[i] != b.Shape[i] {
			return false
		}
	}
	return true
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// AppendPayloadMulti writes exe followed by a format-3 payload: the shared
// objects of progs (one network compiled for ascending batch sizes; see
// checkPrograms), the weights once and the index. weights must be exactly
// the manifests' WeightsBytes long. Like AppendPayload it sets the
// executable's payload marker and refuses an executable that already
// carries a payload. A single program is written as format 2
// (AppendPayload), which every reader of format 3 also reads.
func AppendPayloadMulti(w io.Writer, exe io.Reader, progs []Program, weights []byte) error {
	if err := checkPrograms(progs); err != nil {
		return fmt.Errorf("append payload: %w", err)
	}
	if len(progs) == 1 {
		return AppendPayload(w, exe, progs[0].SharedObject, bytes.NewReader(weights), progs[0].Manifest)
	}
	if int64(len(weights)) != progs[0].Manifest.WeightsBytes {
		return fmt.Errorf("append payload: weights are %d bytes, the manifests say %d", len(weights), progs[0].Manifest.WeightsBytes)
	}
	exeBytes, err := markedCopy(exe)
	if err != nil {
		return err
	}
	cw := &countingWriter{w: w}
	if _, err := cw.Write(exeBytes); err != nil {
		return fmt.Errorf("append payload: copy executable: %w", err)
	}
	wsum := sha256Hex(weights)
	idx := bundleIndex{Format: bundleFormat}
	for i, p := range progs {
		if !bytes.HasPrefix(p.SharedObject, elfMagic) {
			return fmt.Errorf("append payload: program %d (batch %d): the shared object is not an ELF file", i+1, p.Manifest.Batch)
		}
		if err := cw.pad(); err != nil {
			return fmt.Errorf("append payload: %w", err)
		}
		e := bundleEntry{Offset: cw.n, Size: int64(len(p.SharedObject)), Manifest: p.Manifest}
		sums := &Checksums{SharedObject: sha256Hex(p.SharedObject), Weights: wsum}
		if c := p.Manifest.Checksums; c != nil && *c != *sums {
			return fmt.Errorf("append payload: program %d (batch %d): the manifest's checksums %+v do not match the shared object and weights given %+v", i+1, p.Manifest.Batch, *c, *sums)
		}
		e.Manifest.Checksums = sums
		if _, err := cw.Write(p.SharedObject); err != nil {
			return fmt.Errorf("append payload: %w", err)
		}
		idx.Programs = append(idx.Programs, e)
	}
	if err := cw.pad(); err != nil {
		return fmt.Errorf("append payload: %w", err)
	}
	wsec := [2]int64{cw.n, int64(len(weights))}
	if _, err := cw.Write(weights); err != nil {
		return fmt.Errorf("append payload: copy weights: %w", err)
	}
	ib, err := json.Marshal(&idx)
	if err != nil {
		return fmt.Errorf("append payload: %w", err)
	}
	if err := cw.pad(); err != nil {
		return fmt.Errorf("append payload: %w", err)
	}
	isec := [2]int64{cw.n, int64(len(ib))}
	if _, err := cw.Write(ib); err != nil {
		return fmt.Errorf("append payload: %w", err)
	}
	tr := make([]byte, 0, bundleTrailerSize)
	tr = append(tr, bundleMagic...)
	for _, v := range []int64{wsec[0], wsec[1], isec[0], isec[1]} {
		tr = binary.LittleEndian.AppendUint64(tr, uint64(v))
	}
	isum := sha256.Sum256(ib)
	tr = append(tr, isum[:]...)
	tr = append(tr, bundleSum(tr)...)
	if _, err := cw.Write(tr); err != nil {
		return fmt.Errorf("append payload: %w", err)
	}
	return nil
}

// markedCopy reads exe and returns it with the payload marker set (see
// AppendPayload).
func markedCopy(exe io.Reader) ([]byte, error) {
	b, err := io.ReadAll(exe)
	if err != nil {
		return nil, fmt.Errorf("append payload: read executable: %w", err)
	}
	if bytes.Contains(b, markPattern('1')) {
		return nil, errors.New("append payload: the executable already carries a compiled network (its payload marker is set)")
	}
	switch n := bytes.Count(b, markPattern('0')); n {
	case 0:
	case 1:
		b = bytes.Clone(b)
		b[bytes.Index(b, markPattern('0'))+markState] = '1'
	default:
		return nil, fmt.Errorf("append payload: the executable contains the payload marker %d times, want at most once", n)
	}
	return b, nil
}

// bundleSum is the self-check of a format-3 trailer.
func bundleSum(tr []byte) []byte {
	h := sha256.Sum256(tr[:bundleSumAt])
	return h[:8]
}

// isBundleTrailer reports whether the last bytes of tail are a format-3
// trailer, or one whose magic alone is damaged (self-check passes with the
// magic restored): then damaged is true.
func isBundleTrailer(tail []byte) (ok, damaged bool) {
	if len(tail) < bundleTrailerSize {
		return false, false
	}
	tr := tail[len(tail)-bundleTrailerSize:]
	if string(tr[:8]) == bundleMagic {
		return true, false
	}
	c := bytes.Clone(tr)
	copy(c, bundleMagic)
	return false, bytes.Equal(bundleSum(c), c[bundleSumAt:])
}

// FindBundle is FindPayload for executables that may carry several batch
// sizes (format 3, kiln build --batch 1,8,32). A format-2 payload is
// returned as a bundle of one artifact. Every section is checked as
// FindPayload checks its own: the trailer's self-check, each section inside
// the file, aligned and in order, the index against the trailer's SHA-256,
// each program's manifest (valid, carrying checksums, one network with
// ascending batch sizes and the same weights), each shared object's ELF
// magic. Open (through OpenMulti) checks each shared object's and the
// weights' SHA-256. Errors name the part and, for a program, its number
// and batch size.
func FindBundle(exePath string) (b *Bundle, found bool, err error) {
	if exePath == "" {
		if exePath, err = os.Executable(); err != nil {
			return nil, false, fmt.Errorf("find payload: %w", err)
		}
	}
	f, err := os.Open(exePath)
	if err != nil {
		return nil, false, fmt.Errorf("find payload: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, false, fmt.Errorf("find payload: %w", err)
	}
	size := st.Size()
	tail := make([]byte, min(size, bundleTrailerSize))
	if _, err := f.ReadAt(tail, size-int64(len(tail))); err != nil {
		f.Close()
		return nil, false, fmt.Errorf("find payload: read %s: %w", exePath, err)
	}
	ok, damaged := isBundleTrailer(tail)
	if !ok && !damaged {
		f.Close()
		a, found, err := FindPayload(exePath)
		if err != nil || !found {
			return nil, found, err
		}
		b := &Bundle{Artifacts: []Artifact{*a}, mapping: a.mapping}
		b.Artifacts[0].mapping = nil
		return b, true, nil
	}
	defer f.Close()
	corrupt := func(format string, args ...any) (*Bundle, bool, error) {
		return nil, true, fmt.Errorf("find payload: %s: corrupt kiln payload: %s", exePath, fmt.Sprintf(format, args...))
	}
	if damaged {
		return corrupt("the trailer's magic %q is damaged (want %q)", tail[:8], bundleMagic)
	}
	if !bytes.Equal(bundleSum(tail), tail[bundleSumAt:]) {
		return corrupt("the trailer is damaged (its self-check does not match)")
	}
	trailerAt := size - bundleTrailerSize
	field := func(i int) uint64 { return binary.LittleEndian.Uint64(tail[8+8*i:]) }
	wOff, wLen, iOff, iLen := field(0), field(1), field(2), field(3)
	for _, s := range []struct {
		name     string
		off, len uint64
	}{{"weights", wOff, wLen}, {"index", iOff, iLen}} {
		if s.off > uint64(trailerAt) || s.len > uint64(trailerAt)-s.off {
			return corrupt("%s section [%d, +%d) lies outside the %d bytes before the trailer (truncated file?)", s.name, s.off, s.len, trailerAt)
		}
		if s.off%payloadAlign != 0 {
			return corrupt("%s section offset %d is not %d-aligned", s.name, s.off, payloadAlign)
		}
	}
	if iOff+iLen != uint64(trailerAt) {
		return corrupt("the index ends at %d, not at the trailer (%d)", iOff+iLen, trailerAt)
	}
	if wOff+wLen > iOff {
		return corrupt("the weights section at %d overlaps the index at %d", wOff, iOff)
	}
	if iLen == 0 || iLen > maxManifestBytes {
		return corrupt("the index section is %d bytes", iLen)
	}
	ib := make([]byte, iLen)
	if _, err := f.ReadAt(ib, int64(iOff)); err != nil {
		return nil, true, fmt.Errorf("find payload: read index from %s: %w", exePath, err)
	}
	if got := sha256.Sum256(ib); !bytes.Equal(got[:], tail[40:72]) {
		return corrupt("the index (manifests) is damaged: its SHA-256 is %s, the trailer says %s", short(hex.EncodeToString(got[:])), short(hex.EncodeToString(tail[40:72])))
	}
	var idx bundleIndex
	dec := json.NewDecoder(bytes.NewReader(ib))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&idx); err != nil {
		return corrupt("the index: %v", err)
	}
	if idx.Format != bundleFormat {
		return corrupt("index format %d, this runtime reads %d", idx.Format, bundleFormat)
	}
	progs := make([]Program, len(idx.Programs))
	end := int64(0)
	for i, e := range idx.Programs {
		name := fmt.Sprintf("program %d (batch %d)", i+1, e.Manifest.Batch)
		if e.Offset < end || e.Offset%payloadAlign != 0 || e.Size < int64(len(elfMagic)) || e.Offset > int64(wOff) || e.Size > int64(wOff)-e.Offset {
			return corrupt("%s: shared object section [%d, +%d) is misplaced (before the weights at %d, aligned, after the previous section ending at %d)", name, e.Offset, e.Size, wOff, end)
		}
		end = e.Offset + e.Size
		if e.Manifest.Checksums == nil {
			return corrupt("%s: the manifest carries no checksums", name)
		}
		if e.Manifest.WeightsBytes != int64(wLen) {
			return corrupt("%s: the weights section is %d bytes, the manifest says %d", name, wLen, e.Manifest.WeightsBytes)
		}
		if i > 0 && e.Manifest.Checksums.Weights != idx.Programs[0].Manifest.Checksums.Weights {
			return corrupt("%s: the weights' SHA-256 differs from program 1's", name)
		}
		so := make([]byte, e.Size)
		if _, err := f.ReadAt(so, e.Offset); err != nil {
			return nil, true, fmt.Errorf("find payload: read %s from %s: %w", name, exePath, err)
		}
		if !bytes.HasPrefix(so, elfMagic) {
			return corrupt("%s: the shared object section is not an ELF file", name)
		}
		progs[i] = Program{Manifest: e.Manifest, SharedObject: so}
	}
	if err := checkPrograms(progs); err != nil {
		return corrupt("%v", err)
	}
	b = &Bundle{}
	var weights []byte
	if wLen > 0 {
		page := int64(os.Getpagesize())
		base := int64(wOff) / page * page
		delta := int64(wOff) - base
		mem, err := unix.Mmap(int(f.Fd()), base, int(delta+int64(wLen)), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return nil, true, fmt.Errorf("find payload: map weights of %s: %w", exePath, err)
		}
		b.mapping = mem
		weights = mem[delta : delta+int64(wLen) : delta+int64(wLen)]
	} else {
		weights = []byte{}
	}
	for _, p := range progs {
		b.Artifacts = append(b.Artifacts, Artifact{Manifest: p.Manifest, SharedObject: p.SharedObject, Weights: weights})
	}
	return b, true, nil
}
