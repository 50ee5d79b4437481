package rt

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// A standalone executable is an ordinary executable with the artifact
// appended:
//
//	[executable][zero pad to 4096][shared object][pad to 4096][weights]
//	[pad to 4096][manifest JSON][trailer]
//
// The trailer is the last payloadTrailerSize bytes of the file: the magic
// "KILNPAY1" followed by six little-endian uint64: offset and size of the
// shared object, of the weights and of the manifest, offsets counted from
// the start of the file. ELF loaders ignore the appended bytes, so the
// executable still runs; FindPayload locates the artifact from the end.
const (
	payloadMagic       = "KILNPAY1"
	payloadAlign       = 4096
	payloadTrailerSize = 8 + 6*8
	maxManifestBytes   = 64 << 20
)

var elfMagic = []byte("\x7fELF")

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) pad() error {
	var zero [payloadAlign]byte
	_, err := c.Write(zero[:alignUp(c.n, payloadAlign)-c.n])
	return err
}

// AppendPayload writes exe followed by the artifact (shared object, weights,
// manifest) and the trailer FindPayload reads, producing a standalone
// executable. weights is streamed and must yield exactly
// manifest.WeightsBytes bytes.
func AppendPayload(w io.Writer, exe io.Reader, so []byte, weights io.Reader, manifest Manifest) error {
	if err := manifest.Validate(); err != nil {
		return fmt.Errorf("append payload: %w", err)
	}
	if !bytes.HasPrefix(so, elfMagic) {
		return errors.New("append payload: the shared object is not an ELF file")
	}
	man, err := json.Marshal(&manifest)
	if err != nil {
		return fmt.Errorf("append payload: %w", err)
	}
	cw := &countingWriter{w: w}
	if _, err := io.Copy(cw, exe); err != nil {
		return fmt.Errorf("append payload: copy executable: %w", err)
	}
	var sec [3][2]int64 // offset, size of shared object, weights, manifest
	if err := cw.pad(); err != nil {
		return fmt.Errorf("append payload: %w", err)
	}
	sec[0] = [2]int64{cw.n, int64(len(so))}
	if _, err := cw.Write(so); err != nil {
		return fmt.Errorf("append payload: %w", err)
	}
	if err := cw.pad(); err != nil {
		return fmt.Errorf("append payload: %w", err)
	}
	sec[1][0] = cw.n
	// Read one byte past the expected size to detect a longer stream.
	n, err := io.Copy(cw, io.LimitReader(weights, manifest.WeightsBytes+1))
	if err != nil {
		return fmt.Errorf("append payload: copy weights: %w", err)
	}
	if n != manifest.WeightsBytes {
		if n > manifest.WeightsBytes {
			return fmt.Errorf("append payload: weights are longer than the %d bytes the manifest says", manifest.WeightsBytes)
		}
		return fmt.Errorf("append payload: weights are %d bytes, the manifest says %d", n, manifest.WeightsBytes)
	}
	sec[1][1] = n
	if err := cw.pad(); err != nil {
		return fmt.Errorf("append payload: %w", err)
	}
	sec[2] = [2]int64{cw.n, int64(len(man))}
	if _, err := cw.Write(man); err != nil {
		return fmt.Errorf("append payload: %w", err)
	}
	trailer := make([]byte, 0, payloadTrailerSize)
	trailer = append(trailer, payloadMagic...)
	for _, s := range sec {
		trailer = binary.LittleEndian.AppendUint64(trailer, uint64(s[0]))
		trailer = binary.LittleEndian.AppendUint64(trailer, uint64(s[1]))
	}
	if _, err := cw.Write(trailer); err != nil {
		return fmt.Errorf("append payload: %w", err)
	}
	return nil
}

// FindPayload looks for an artifact appended by AppendPayload to the
// executable at exePath ("" means the running executable, os.Executable).
// It returns found == false, and no error, for an executable without one.
//
// The shared object and manifest are read into memory; the weights section
// is mapped read-only straight from the file, so the weights cost no copy
// and only the pages the kernels touch are read, from the page cache. The
// returned Artifact owns that mapping: Close it after the Models opened
// from it. The file must not be truncated or rewritten in place while
// mapped (replacing it by rename, as tensor.WriteFileAtomic does, is fine).
func FindPayload(exePath string) (a *Artifact, found bool, err error) {
	if exePath == "" {
		if exePath, err = os.Executable(); err != nil {
			return nil, false, fmt.Errorf("find payload: %w", err)
		}
	}
	f, err := os.Open(exePath)
	if err != nil {
		return nil, false, fmt.Errorf("find payload: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, false, fmt.Errorf("find payload: %w", err)
	}
	size := st.Size()
	corrupt := func(format string, args ...any) (*Artifact, bool, error) {
		return nil, true, fmt.Errorf("find payload: %s: corrupt kiln payload: %s", exePath, fmt.Sprintf(format, args...))
	}

	// Read the tail, a little more than the trailer, to tell a missing
	// trailer from one cut short or followed by extra bytes.
	tailLen := min(size, 512)
	tail := make([]byte, tailLen)
	if _, err := f.ReadAt(tail, size-tailLen); err != nil {
		return nil, false, fmt.Errorf("find payload: read %s: %w", exePath, err)
	}
	if tailLen < payloadTrailerSize || string(tail[tailLen-payloadTrailerSize:][:8]) != payloadMagic {
		if i := bytes.LastIndex(tail, []byte(payloadMagic)); i >= 0 {
			at := size - tailLen + int64(i)
			if end := at + payloadTrailerSize; end > size {
				return corrupt("the trailer at offset %d is cut short by %d bytes (truncated file?)", at, end-size)
			}
			return corrupt("%d unexpected bytes follow the trailer at offset %d", size-at-payloadTrailerSize, at)
		}
		return nil, false, nil
	}
	tr := tail[tailLen-payloadTrailerSize+8:]
	trailerAt := size - payloadTrailerSize
	var sec [3]struct{ off, size int64 }
	names := [3]string{"shared object", "weights", "manifest"}
	end := int64(0)
	for i := range sec {
		off := binary.LittleEndian.Uint64(tr[16*i:])
		n := binary.LittleEndian.Uint64(tr[16*i+8:])
		if off > uint64(trailerAt) || n > uint64(trailerAt)-off {
			return corrupt("%s section [%d, +%d) lies outside the %d bytes before the trailer (truncated file?)", names[i], off, n, trailerAt)
		}
		sec[i].off, sec[i].size = int64(off), int64(n)
		if sec[i].off%payloadAlign != 0 {
			return corrupt("%s section offset %d is not %d-aligned", names[i], off, payloadAlign)
		}
		if sec[i].off < end {
			return corrupt("%s section at %d overlaps the previous section, which ends at %d", names[i], off, end)
		}
		end = sec[i].off + sec[i].size
	}
	if end != trailerAt {
		return corrupt("the manifest ends at %d, not at the trailer (%d)", end, trailerAt)
	}
	if sec[0].size < int64(len(elfMagic)) {
		return corrupt("the shared object section is %d bytes", sec[0].size)
	}
	if sec[2].size == 0 || sec[2].size > maxManifestBytes {
		return corrupt("the manifest section is %d bytes", sec[2].size)
	}

	read := func(i int) ([]byte, error) {
		b := make([]byte, sec[i].size)
		if _, err := f.ReadAt(b, sec[i].off); err != nil {
			return nil, fmt.Errorf("find payload: read %s from %s: %w", names[i], exePath, err)
		}
		return b, nil
	}
	manBytes, err := read(2)
	if err != nil {
		return nil, true, err
	}
	man, err := ParseManifest(manBytes)
	if err != nil {
		return corrupt("%v", err)
	}
	if man.WeightsBytes != sec[1].size {
		return corrupt("the weights section is %d bytes, the manifest says %d", sec[1].size, man.WeightsBytes)
	}
	so, err := read(0)
	if err != nil {
		return nil, true, err
	}
	if !bytes.HasPrefix(so, elfMagic) {
		return corrupt("the shared object section is not an ELF file")
	}
	a = &Artifact{Manifest: *man, SharedObject: so}
	if sec[1].size > 0 {
		// mmap offsets must be page-aligned; pages may exceed 4096 bytes
		// (arm64 with 16K or 64K pages), so map from the page below.
		page := int64(os.Getpagesize())
		base := sec[1].off / page * page
		delta := sec[1].off - base
		mem, err := unix.Mmap(int(f.Fd()), base, int(delta+sec[1].size), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return nil, true, fmt.Errorf("find payload: map weights of %s: %w", exePath, err)
		}
		a.mapping = mem
		a.Weights = mem[delta : delta+sec[1].size : delta+sec[1].size]
	} else {
		a.Weights = []byte{}
	}
	return a, true, nil
}
