package codegen

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Build cache entries. An entry is a file named by its key (a hash of what
// produced it: IR, target, compiler, arguments) and a sidecar, the same
// name with ".sha256" appended, holding the SHA-256 (hex) of the entry's
// content. Reuse verifies the content against the sidecar and a structural
// check of the caller's (an ELF header for objects and libraries, the
// kernel list for a library's index): a truncated, bit-flipped, empty or
// garbage entry, or one without its sidecar, is not used. It is removed and
// reported on Toolchain.Warn in one line naming the file, and the caller
// rebuilds it, so a damaged cache costs one rebuild instead of failing (or
// worse, silently miscompiling) every later build. The entry is written
// first and its sidecar second, each by rename from a temporary file, so a
// reader never sees a sidecar for a partial entry; an entry whose sidecar
// is not written yet reads as damaged and is rebuilt (identical content).

// sumSuffix names an entry's digest sidecar.
const sumSuffix = ".sha256"

// ELFMagic starts every object file and shared library.
var ELFMagic = []byte("\x7fELF")

// CheckELF is the structural check of a cached object or library.
func CheckELF(b []byte) error {
	if !bytes.HasPrefix(b, ELFMagic) {
		return errors.New("not an ELF file")
	}
	return nil
}

// warn writes one line to tc.Warn (os.Stderr when nil).
func (tc *Toolchain) warn(format string, args ...any) {
	var w io.Writer = os.Stderr
	if tc.Warn != nil {
		w = tc.Warn
	}
	fmt.Fprintf(w, "kiln: warning: "+format+"\n", args...)
}

// LookupCached returns the content of the cache entry path when it is there
// and intact: its SHA-256 equals its sidecar's and check (if not nil)
// accepts it. A missing entry is a silent miss; a damaged one is removed
// with a warning and is a miss too.
func (tc *Toolchain) LookupCached(path string, check func([]byte) error) ([]byte, bool) {
	b, err := os.ReadFile(path)
	sum, serr := os.ReadFile(path + sumSuffix)
	if errors.Is(err, os.ErrNotExist) && errors.Is(serr, os.ErrNotExist) {
		return nil, false
	}
	reason := ""
	switch {
	case err != nil:
		reason = err.Error()
	case serr != nil:
		reason = "no checksum: " + serr.Error()
	case len(b) == 0:
		reason = "empty"
	default:
		got := sha256.Sum256(b)
		want := strings.TrimSpace(string(sum))
		if hex.EncodeToString(got[:]) != want {
			reason = fmt.Sprintf("%d bytes whose SHA-256 does not match the recorded one", len(b))
		} else if check != nil {
			if cerr := check(b); cerr != nil {
				reason = cerr.Error()
			}
		}
	}
	if reason == "" {
		return b, true
	}
	tc.warn("damaged build cache entry %s (%s): rebuilding it", path, reason)
	os.Remove(path + sumSuffix)
	os.Remove(path)
	return nil, false
}

// StoreCached writes b as the cache entry path with its sidecar, each
// atomically (a temporary file renamed into place), creating the directory.
func (tc *Toolchain) StoreCached(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := writeFileAtomic(path, b); err != nil {
		return err
	}
	sum := sha256.Sum256(b)
	return writeFileAtomic(path+sumSuffix, []byte(hex.EncodeToString(sum[:])+"\n"))
}

// writeFileAtomic writes b to path through a temporary file in the same
// directory renamed into place.
func writeFileAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}
