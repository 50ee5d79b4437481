package rt

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
)

// Integrity of artifacts. A standalone executable carries three digests
// (SHA-256, FIPS 180-4): the manifest's, in the payload trailer, and the
// shared object's and the weights', in the manifest (Manifest.Checksums).
// FindPayload checks the trailer and the manifest; Open checks the shared
// object before loading it (a damaged library must not run its
// initialisers) and the weights before the first inference, unless
// Options.SkipWeightsCheck. Any mismatch is an error naming the part, so a
// flipped byte anywhere in the payload is refused instead of running into
// wrong results or a crash.
//
// Besides the trailer, kiln build sets a marker inside the runner's own
// data (payloadMark), which survives `strip` and truncation of the appended
// data: an executable with the marker set but no payload is reported as a
// damaged build, not mistaken for the plain runner.

// payloadMark is the marker AppendPayload sets in the copy of the runner it
// writes: byte markState is '0' in every program as linked and '1' in a
// built executable. It is a composite literal of bytes, so it is stored in
// the data section once and no string constant repeats it; the patterns
// searched for are derived from it at run time (markPattern), never spelled
// out, so that the only occurrence in a runner is this variable.
var payloadMark = [24]byte{0, 'K', 'I', 'L', 'N', '-', 'P', 'A', 'Y', 'L', 'O', 'A', 'D', '-', 'M', 'A', 'R', 'K', '-', 'v', '1', ':', '0', 0}

const markState = 22

// markPattern returns the bytes of payloadMark with its state byte set to
// state ('0': no payload appended; '1': appended).
func markPattern(state byte) []byte {
	p := payloadMark // a copy
	p[markState] = state
	return p[:]
}

// selfCarriesMark reports whether the running program is a built executable
// (kiln build set its marker).
func selfCarriesMark() bool { return payloadMark[markState] == '1' }

// fileCarriesMark reports whether the file f contains the set marker; it
// scans the whole file, which only happens for a file without a valid
// payload.
func fileCarriesMark(f io.ReaderAt, size int64) (bool, error) {
	pat := markPattern('1')
	const chunk = 1 << 20
	buf := make([]byte, chunk+len(pat))
	for off := int64(0); off < size; off += chunk {
		n, err := f.ReadAt(buf[:min(int64(len(buf)), size-off)], off)
		if err != nil && err != io.EOF {
			return false, err
		}
		if bytes.Contains(buf[:n], pat) {
			return true, nil
		}
	}
	return false, nil
}

// isSHA256Hex reports whether s is a SHA-256 digest in lowercase hex.
func isSHA256Hex(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// sha256Hex is the lowercase hex SHA-256 digest of b.
func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// digestError is the error for a part whose digest does not match.
func digestError(part, got, want string) error {
	verb, pron := "is", "its"
	if part == "the weights" {
		verb = "are"
		pron = "their"
	}
	return fmt.Errorf("%s %s damaged: %s SHA-256 is %s, the manifest says %s", part, verb, pron, short(got), short(want))
}

func short(d string) string {
	if len(d) > 16 {
		return d[:16] + "…"
	}
	return d
}

// verifySharedObject checks the shared object of a (its bytes, or the file
// at SharedObjectPath) against Manifest.Checksums, if any.
func verifySharedObject(a *Artifact) error {
	c := a.Manifest.Checksums
	if c == nil {
		return nil
	}
	var got string
	if a.SharedObject != nil {
		got = sha256Hex(a.SharedObject)
	} else {
		f, err := os.Open(a.SharedObjectPath)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return fmt.Errorf("read %s: %w", a.SharedObjectPath, err)
		}
		got = hex.EncodeToString(h.Sum(nil))
	}
	if got != c.SharedObject {
		return digestError("the shared object (kernels)", got, c.SharedObject)
	}
	return nil
}

// weightsHasher hashes the weights as setWeights passes over them; nil when
// the weights are not checked.
func weightsHasher(a *Artifact, skip bool) hash.Hash {
	if a.Manifest.Checksums == nil || skip {
		return nil
	}
	return sha256.New()
}

// checkWeightsDigest compares the digest h accumulated with the manifest's.
func checkWeightsDigest(man *Manifest, h hash.Hash) error {
	if h == nil {
		return nil
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != man.Checksums.Weights {
		return digestError("the weights", got, man.Checksums.Weights)
	}
	return nil
}
