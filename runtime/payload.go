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

// A standalone executable is an ordinary executable with the artifact
// appended:
//
//	[executable][zero pad to 4096][shared object][pad to 4096][weights]
//	[pad to 4096][manifest JSON][trailer]
//
// The trailer is the last payloadTrailerSize bytes of the file: the magic
// "KILNPAY2", six little-endian uint64 (offset and size of the shared
// object, of the weights and of the manifest, offsets counted from the start
// of the file), the SHA-256 of the manifest (32 bytes) and the first 8 bytes
// of the SHA-256 of everything before them in the trailer, so a damaged
// offset or magic is recognised as such. The manifest carries the SHA-256
// of the shared object and of the weights (Manifest.Checksums). ELF loaders
// ignore the appended bytes, so the executable still runs; FindPayload
// locates the artifact from the end. AppendPayload also sets the marker in
// the executable's own data (payloadMark, verify.go), which tells a built
// executable whose payload was cut off or stripped from the plain runner.
// Format 1 ("KILNPAY1") had no digests and no marker. Format 3
// ("KILNPAY3", bundle.go) carries several batch sizes sharing one weights
// section; FindPayload refuses it pointing to FindBundle, which reads both.
const (
	payloadMagic       = "KILNPAY2"
	payloadMagicPrefix = "KILNPAY"
	payloadTrailerSize = 8 + 6*8 + 32 + 8
	trailerSumAt       = payloadTrailerSize - 8
	payloadAlign       = 4096
	maxManifestBytes   = 64 << 20
)

// trailerSum is the self-check of a trailer: the first 8 bytes of the
// SHA-256 of its first trailerSumAt bytes.
func trailerSum(tr []byte) []byte {
	h := sha256.Sum256(tr[:trailerSumAt])
	return h[:8]
}

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
// manifest.WeightsBytes bytes. The manifest written carries the SHA-256 of
// the shared object and of the weights (Manifest.Checksums; a caller's
// Checksums must match them) and the trailer the manifest's. If exe contains
// the runtime's payload marker (every kiln runner does, once), the copy has
// it set; an exe whose marker is already set carries a payload and is
// refused.
func AppendPayload(w io.Writer, exe io.Reader, so []byte, weights io.Reader, manifest Manifest) error {
	if err := manifest.Validate(); err != nil {
		return fmt.Errorf("append payload: %w", err)
	}
	if !bytes.HasPrefix(so, elfMagic) {
		return errors.New("append payload: the shared object is not an ELF file")
	}
	exeBytes, err := io.ReadAll(exe)
	if err != nil {
		return fmt.Errorf("append payload: read executable: %w", err)
	}
	if bytes.Contains(exeBytes, markPattern('1')) {
		return errors.New("append payload: the executable already carries a compiled network (its payload marker is set)")
	}
	switch n := bytes.Count(exeBytes, markPattern('0')); n {
	case 0:
	case 1:
		exeBytes = bytes.Clone(exeBytes)
		exeBytes[bytes.Index(exeBytes, markPattern('0'))+markState] = '1'
	default:
		return fmt.Errorf("append payload: the executable contains the payload marker %d times, want at most once", n)
	}
	cw := &countingWriter{w: w}
	if _, err := cw.Write(exeBytes); err != nil {
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
	wh := sha256.New()
	n, err := io.Copy(io.MultiWriter(cw, wh), io.LimitReader(weights, manifest.WeightsBytes+1))
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
	sums := &Checksums{SharedObject: sha256Hex(so), Weights: hex.EncodeToString(wh.Sum(nil))}
	if c := manifest.Checksums; c != nil && *c != *sums {
		return fmt.Errorf("append payload: the manifest's checksums %+v do not match the shared object and weights given %+v", *c, *sums)
	}
	manifest.Checksums = sums
	man, err := json.Marshal(&manifest)
	if err != nil {
		return fmt.Errorf("append payload: %w", err)
	}
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
	manSum := sha256.Sum256(man)
	trailer = append(trailer, manSum[:]...)
	trailer = append(trailer, trailerSum(trailer)...)
	if _, err := cw.Write(trailer); err != nil {
		return fmt.Errorf("append payload: %w", err)
	}
	return nil
}

// FindPayload looks for an artifact appended by AppendPayload to the
// executable at exePath ("" means the running executable, os.Executable).
// It returns found == false, and no error, for an executable without one.
// A payload that is present but damaged (a trailer cut short or damaged,
// sections out of place, a manifest whose SHA-256 differs from the
// trailer's, a format-1 payload) is an error with found == true naming the
// part, and so is a built executable whose payload is gone altogether
// (truncated, or run through strip, which drops appended data): its payload
// marker is set although no trailer ends the file.
//
// The shared object and manifest are read into memory; the weights section
// is mapped read-only straight from the file, so the weights cost no copy
// and only the pages the kernels touch are read, from the page cache. The
// returned Artifact owns that mapping: Close it after the Models opened
// from it. The file must not be truncated or rewritten in place while
// mapped (replacing it by rename, as tensor.WriteFileAtomic does, is fine).
// The digests of the shared object and weights are checked by Open.
func FindPayload(exePath string) (a *Artifact, found bool, err error) {
	self := exePath == ""
	if self {
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
	if ok, _ := isBundleTrailer(tail); ok {
		return nil, true, fmt.Errorf("find payload: %s carries several batch sizes (payload format 3): open it with rt.FindBundle and rt.OpenMulti", exePath)
	}
	if tailLen < payloadTrailerSize || string(tail[tailLen-payloadTrailerSize:][:8]) != payloadMagic {
		if tailLen >= payloadTrailerSize {
			// A trailer whose self-check passes once the magic is restored
			// has a damaged magic.
			tr := bytes.Clone(tail[tailLen-payloadTrailerSize:])
			copy(tr, payloadMagic)
			if bytes.Equal(trailerSum(tr), tr[trailerSumAt:]) {
				return corrupt("the trailer's magic %q is damaged (want %q)", tail[tailLen-payloadTrailerSize:][:8], payloadMagic)
			}
		}
		if i := bytes.LastIndex(tail, []byte(payloadMagicPrefix)); i >= 0 {
			at := size - tailLen + int64(i)
			if string(tail[i:min(int(tailLen), i+8)]) == "KILNPAY1" && at+56 == size {
				return corrupt("payload format 1, written by an older kiln (no checksums): rebuild the executable with this kiln")
			}
			trSize := int64(payloadTrailerSize)
			if string(tail[i:min(int(tailLen), i+8)]) == bundleMagic {
				trSize = bundleTrailerSize
			}
			if end := at + trSize; end > size {
				return corrupt("the trailer at offset %d is cut short by %d bytes (truncated file?)", at, end-size)
			}
			return corrupt("%d unexpected bytes follow the trailer at offset %d", size-at-trSize, at)
		}
		marked := selfCarriesMark()
		if !self {
			if marked, err = fileCarriesMark(f, size); err != nil {
				return nil, false, fmt.Errorf("find payload: read %s: %w", exePath, err)
			}
		}
		if marked {
			return corrupt("this executable was built by kiln build, but the compiled network appended to it is missing "+
				"(no payload trailer at the end of its %d bytes): the file was truncated, or run through strip, which removes appended data; "+
				"rebuild it, and copy it without stripping", size)
		}
		return nil, false, nil
	}
	if trl := tail[tailLen-payloadTrailerSize:]; !bytes.Equal(trailerSum(trl), trl[trailerSumAt:]) {
		return corrupt("the trailer is damaged (its self-check does not match)")
	}
	tr := tail[tailLen-payloadTrailerSize+8:]
	manSum := tr[48:80]
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
	if got := sha256.Sum256(manBytes); !bytes.Equal(got[:], manSum) {
		return corrupt("the manifest is damaged: its SHA-256 is %s, the trailer says %s", short(hex.EncodeToString(got[:])), short(hex.EncodeToString(manSum)))
	}
	man, err := ParseManifest(manBytes)
	if err != nil {
		return corrupt("%v", err)
	}
	if man.Checksums == nil {
		return corrupt("the manifest carries no checksums")
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
