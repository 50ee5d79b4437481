package cuda

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

	rt "github.com/kiln-dev/kiln/runtime"
)

// A GPU executable is the kiln runner with a GPU artifact appended, in the
// same spirit as the CPU payload (runtime/payload.go):
//
//	[executable][pad to 4096][PTX][pad][weights][pad][manifest JSON][trailer]
//
// The trailer (gpuTrailerSize bytes) is the magic "KILNGPU1", six
// little-endian uint64 (offset and size of the PTX, the weights and the
// manifest, from the start of the file), the SHA-256 of the manifest and
// the first 8 bytes of the SHA-256 of the trailer before them. The manifest
// (Manifest) holds the program's launch list and the SHA-256 of the PTX and
// of the weights. Written with no executable in front (AppendPayload with a
// nil exe) the same bytes are a GPU program file that the runner runs with
// --program. The weights section may be empty with Manifest.WeightsSHA256
// set (kiln build --weights-external): the weights blob then comes from a
// file at run time (--weights-file), checked against that digest; a GPU
// machine without Go or LLVM gets full-size networks that way without
// carrying the weights twice.
//
// The magic shares no prefix with the CPU formats ("KILNPAY"), so rt's
// FindBundle sees a GPU executable as a runner without a payload, and the
// runner asks FindPayload here first.
const (
	gpuMagic       = "KILNGPU1"
	gpuTrailerSize = 8 + 6*8 + 32 + 8
	gpuSumAt       = gpuTrailerSize - 8
	gpuAlign       = 4096
	// ManifestFormat is the version of Manifest.
	ManifestFormat = 1
)

// Manifest describes a GPU artifact: the network, the program (its PTX is
// the PTX section, not the JSON), the image preprocessing and labels for
// --image, the build record and the digests of the two other sections.
type Manifest struct {
	Format     int            `json:"format"`
	Network    string         `json:"network"`
	Program    Program        `json:"program"`
	Preprocess *rt.Preprocess `json:"preprocess,omitempty"`
	Labels     []string       `json:"labels,omitempty"`
	Build      *rt.BuildInfo  `json:"build,omitempty"`
	// PTXSHA256 and WeightsSHA256 are hex SHA-256 digests.
	PTXSHA256     string `json:"ptx_sha256"`
	WeightsSHA256 string `json:"weights_sha256"`
	// WeightsExternal says the weights section is empty and the weights
	// (WeightsSHA256) come from a file at run time.
	WeightsExternal bool `json:"weights_external,omitempty"`
}

// Artifact is a GPU artifact read by FindPayload: the manifest with
// Program.PTX filled in, and the weights (nil when external).
type Artifact struct {
	Manifest Manifest
	Weights  []byte
}

// Program returns the program with its PTX and weights (nil when external).
func (a *Artifact) Program() *Program {
	p := a.Manifest.Program
	p.Weights = a.Weights
	return &p
}

// SetWeights supplies external weights, checking their size and SHA-256.
func (a *Artifact) SetWeights(w []byte, name string) error {
	m := &a.Manifest
	if int64(len(w)) != m.Program.WeightsBytes {
		return fmt.Errorf("weights file %s: %d bytes, the program needs %d", name, len(w), m.Program.WeightsBytes)
	}
	if got := sha256Hex(w); got != m.WeightsSHA256 {
		return fmt.Errorf("weights file %s: SHA-256 %s, the program was built with %s (regenerate it with the same kiln build command)", name, got[:16], m.WeightsSHA256[:min(16, len(m.WeightsSHA256))])
	}
	a.Weights = w
	return nil
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func gpuTrailerSum(tr []byte) []byte {
	h := sha256.Sum256(tr[:gpuSumAt])
	return h[:8]
}

// AppendPayload writes exe (nil: nothing, giving a program file) followed
// by the GPU artifact of man and prog: prog.PTX, prog.Weights (omitted when
// external) and the manifest with the digests filled in.
func AppendPayload(w io.Writer, exe io.Reader, man Manifest, prog *Program, external bool) error {
	if err := prog.Validate(); err != nil {
		return fmt.Errorf("append GPU payload: %w", err)
	}
	if int64(len(prog.Weights)) != prog.WeightsBytes {
		return fmt.Errorf("append GPU payload: %d bytes of weights, the program says %d", len(prog.Weights), prog.WeightsBytes)
	}
	man.Format = ManifestFormat
	man.Program = *prog
	man.Program.PTX = ""
	man.Program.Weights = nil
	man.PTXSHA256 = sha256Hex([]byte(prog.PTX))
	man.WeightsSHA256 = sha256Hex(prog.Weights)
	man.WeightsExternal = external
	js, err := json.Marshal(&man)
	if err != nil {
		return fmt.Errorf("append GPU payload: %w", err)
	}
	var n int64
	write := func(b []byte) error {
		k, err := w.Write(b)
		n += int64(k)
		return err
	}
	pad := func() error {
		var zero [gpuAlign]byte
		return write(zero[:(gpuAlign-n%gpuAlign)%gpuAlign])
	}
	if exe != nil {
		k, err := io.Copy(w, exe)
		n += k
		if err != nil {
			return fmt.Errorf("append GPU payload: copy executable: %w", err)
		}
	}
	weights := prog.Weights
	if external {
		weights = nil
	}
	var sec [3][2]int64
	for i, b := range [][]byte{[]byte(prog.PTX), weights, js} {
		if err := pad(); err != nil {
			return fmt.Errorf("append GPU payload: %w", err)
		}
		sec[i] = [2]int64{n, int64(len(b))}
		if err := write(b); err != nil {
			return fmt.Errorf("append GPU payload: %w", err)
		}
	}
	tr := make([]byte, 0, gpuTrailerSize)
	tr = append(tr, gpuMagic...)
	for _, s := range sec {
		tr = binary.LittleEndian.AppendUint64(tr, uint64(s[0]))
		tr = binary.LittleEndian.AppendUint64(tr, uint64(s[1]))
	}
	sum := sha256.Sum256(js)
	tr = append(tr, sum[:]...)
	tr = append(tr, gpuTrailerSum(tr)...)
	if err := write(tr); err != nil {
		return fmt.Errorf("append GPU payload: %w", err)
	}
	return nil
}

// maxGPUManifest bounds the manifest section.
const maxGPUManifest = 64 << 20

// FindPayload reads the GPU artifact at the end of the file at path ("":
// the running executable). found is false, with no error, for a file that
// carries none (the plain runner, a CPU executable). A damaged artifact — a
// trailer, section, manifest, PTX or weights whose digest does not match —
// is an error naming the part. The weights are read into memory (they are
// uploaded to the GPU once and then dropped by the caller).
func FindPayload(path string) (a *Artifact, found bool, err error) {
	if path == "" {
		if path, err = os.Executable(); err != nil {
			return nil, false, fmt.Errorf("find GPU payload: %w", err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, false, fmt.Errorf("find GPU payload: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, false, fmt.Errorf("find GPU payload: %w", err)
	}
	size := st.Size()
	if size < gpuTrailerSize {
		return nil, false, nil
	}
	tr := make([]byte, gpuTrailerSize)
	if _, err := f.ReadAt(tr, size-gpuTrailerSize); err != nil {
		return nil, false, fmt.Errorf("find GPU payload: read %s: %w", path, err)
	}
	if string(tr[:8]) != gpuMagic {
		return nil, false, nil
	}
	corrupt := func(format string, args ...any) (*Artifact, bool, error) {
		return nil, true, fmt.Errorf("find GPU payload: %s: corrupt GPU payload: %s", path, fmt.Sprintf(format, args...))
	}
	if !bytes.Equal(gpuTrailerSum(tr), tr[gpuSumAt:]) {
		return corrupt("the trailer is damaged (its self-check does not match)")
	}
	names := [3]string{"PTX", "weights", "manifest"}
	var sec [3][2]int64
	end := int64(0)
	limit := uint64(size - gpuTrailerSize)
	for i := range sec {
		off := binary.LittleEndian.Uint64(tr[8+16*i:])
		n := binary.LittleEndian.Uint64(tr[16+16*i:])
		if off > limit || n > limit-off || int64(off) < end {
			return corrupt("%s section [%d, +%d) lies outside the file or overlaps the previous one (truncated file?)", names[i], off, n)
		}
		sec[i] = [2]int64{int64(off), int64(n)}
		end = int64(off + n)
	}
	if end != size-gpuTrailerSize {
		return corrupt("the manifest ends at %d, not at the trailer (%d)", end, size-gpuTrailerSize)
	}
	if sec[2][1] == 0 || sec[2][1] > maxGPUManifest {
		return corrupt("the manifest section is %d bytes", sec[2][1])
	}
	read := func(i int) ([]byte, error) {
		b := make([]byte, sec[i][1])
		if _, err := f.ReadAt(b, sec[i][0]); err != nil {
			return nil, fmt.Errorf("find GPU payload: read %s from %s: %w", names[i], path, err)
		}
		return b, nil
	}
	js, err := read(2)
	if err != nil {
		return nil, true, err
	}
	if sum := sha256.Sum256(js); !bytes.Equal(sum[:], tr[56:88]) {
		return corrupt("the manifest is damaged (its SHA-256 differs from the trailer's)")
	}
	a = &Artifact{}
	dec := json.NewDecoder(bytes.NewReader(js))
	if err := dec.Decode(&a.Manifest); err != nil {
		return corrupt("manifest: %v", err)
	}
	m := &a.Manifest
	if m.Format != ManifestFormat {
		return corrupt("manifest format %d, this runtime reads %d (rebuild with this kiln)", m.Format, ManifestFormat)
	}
	ptx, err := read(0)
	if err != nil {
		return nil, true, err
	}
	if sha256Hex(ptx) != m.PTXSHA256 {
		return corrupt("the PTX section is damaged (its SHA-256 differs from the manifest's)")
	}
	m.Program.PTX = string(ptx)
	switch {
	case m.WeightsExternal && sec[1][1] != 0:
		return corrupt("the weights are external but the weights section holds %d bytes", sec[1][1])
	case !m.WeightsExternal:
		if sec[1][1] != m.Program.WeightsBytes {
			return corrupt("the weights section is %d bytes, the program says %d", sec[1][1], m.Program.WeightsBytes)
		}
		if a.Weights, err = read(1); err != nil {
			return nil, true, err
		}
		if sha256Hex(a.Weights) != m.WeightsSHA256 {
			return corrupt("the weights are damaged (their SHA-256 differs from the manifest's)")
		}
	}
	if err := m.Program.Validate(); err != nil {
		return corrupt("%v", err)
	}
	return a, true, nil
}

// ErrWeightsExternal is returned by OpenArtifact for an artifact whose
// weights were left out and not supplied (Artifact.SetWeights).
var ErrWeightsExternal = errors.New("this GPU program was built with --weights-external: give the weights file (--weights-file)")
