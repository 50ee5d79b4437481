package rt

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/target"
)

// ManifestVersion is the manifest format version this runtime reads:
// Manifest.Version must equal it. The shared object's kernel ABI has its own
// version, ABIVersion (abi.go). Version 2 added Features; version 3 added
// Checksums.
const ManifestVersion = 3

// ISA names as they appear in Manifest.ISAs, in the symbol suffix of
// kiln_run_<isa>, in Options.ISA and in KILN_ISA.
// They are the CPU target names of the target table (package target).
const (
	ISAAVX512 = target.NameAVX512 // amd64: AVX-512 (F, VL, BW, DQ, CD) + AVX2 + FMA
	ISAAVX2   = target.NameAVX2   // amd64: AVX2 + FMA
	ISANEON   = target.NameNEON   // arm64: Advanced SIMD
)

// Manifest describes a compiled artifact. The code generator writes it as
// JSON next to (or, in a standalone executable, after) the shared object and
// the weights; the runtime checks it with Validate before using it.
type Manifest struct {
	// Version is the artifact format version; must be ManifestVersion.
	Version int `json:"version"`
	// Network names the compiled network, e.g. "inception_v4".
	Network string `json:"network"`
	// Batch is the batch size the artifact was compiled for; it is the
	// first dimension of Input.Shape and Output.Shape.
	Batch int `json:"batch"`
	// Arch is the target architecture: "amd64" or "arm64".
	Arch string `json:"arch"`
	// ISAs lists the instruction sets the shared object has an entry point
	// for (kiln_run_<isa>), e.g. ["avx512", "avx2"] or ["neon"].
	ISAs []string `json:"isas"`
	// Features maps each ISA of ISAs to the CPU features its kernels were
	// compiled with, as the target table names them (LLVM feature names,
	// e.g. "avx512f"); the runtime refuses to run an ISA whose features
	// this CPU lacks, and refuses feature names it does not know.
	Features map[string][]string `json:"features"`
	// ArenaBytes is the size of one activation arena in bytes.
	ArenaBytes int64 `json:"arena_bytes"`
	// WeightsBytes is the exact size of the weights blob in bytes.
	WeightsBytes int64 `json:"weights_bytes"`
	// Input is where the network input lives in the arena (row-major).
	Input TensorInfo `json:"input"`
	// Output is where the network output lives in the arena (row-major).
	Output TensorInfo `json:"output"`
	// Taps are named intermediate values compiled as extra outputs (kiln
	// build/run --tap NAME: a module output, e.g. "features.5"), stored plain
	// row-major in the arena and kept live to the end of a run, so
	// Model.RunTaps can copy them out. Name is the mark's name.
	Taps []TensorInfo `json:"taps,omitempty"`
	// State lists the artifact's mutable parameters (the graph's updates):
	// tensors that persist across runs of a Model, start from values in the
	// weights blob and are rewritten by every run (training statistics,
	// optimizer state, accumulators).
	State []StateInfo `json:"state,omitempty"`
	// Kernels lists the kernels in execution order; the timings array of
	// kiln_run_<isa> is indexed like it.
	Kernels []KernelInfo `json:"kernels"`
	// Preprocess, when present, is the image preprocessing the network
	// expects (used for --image).
	Preprocess *Preprocess `json:"preprocess,omitempty"`
	// Labels, when present, names the output classes; its length equals the
	// number of output values per batch item.
	Labels []string `json:"labels,omitempty"`
	// Checksums, when present, are the SHA-256 digests of the shared object
	// and the weights blob; Open verifies them (see Artifact). AppendPayload
	// always sets them, and a standalone executable's manifest is itself
	// covered by a digest in the payload trailer. A manifest without them
	// (an artifact compiled in this process and opened from memory) is
	// trusted as is.
	Checksums *Checksums `json:"checksums,omitempty"`
	// Build, when present, is the artifact's identity: what built it and
	// from what (kiln build sets it; the runner's --info prints it).
	Build *BuildInfo `json:"build,omitempty"`
}

// BuildInfo identifies how an artifact was built.
type BuildInfo struct {
	// KilnVersion is the version of the kiln that built the artifact
	// (module version, VCS revision and dirty flag: `kiln version`).
	KilnVersion string `json:"kiln_version"`
	// Source is the network's source: a built-in name or a file path.
	Source string `json:"source,omitempty"`
	// SourceHash is the SHA-256 of the network's IR as printed (ir.Print)
	// before the pass pipeline: it covers the .kiln file and its imports as
	// elaborated.
	SourceHash string `json:"source_hash,omitempty"`
	// Weights is the weights file the artifact was built from ("" for
	// procedural weights) and WeightsHash the SHA-256 of that file.
	Weights     string `json:"weights,omitempty"`
	WeightsHash string `json:"weights_hash,omitempty"`
	// Procedural is set when the weights are Kiln's procedural weights
	// (no --weights): the outputs are not a trained network's.
	Procedural bool `json:"procedural,omitempty"`
}

// Checksums are lowercase hexadecimal SHA-256 digests (FIPS 180-4) of the
// parts of an artifact.
type Checksums struct {
	// SharedObject is the digest of the shared object's bytes.
	SharedObject string `json:"shared_object"`
	// Weights is the digest of the weights blob (Manifest.WeightsBytes
	// bytes).
	Weights string `json:"weights"`
}

// TensorInfo places a network input or output in the arena.
type TensorInfo struct {
	// Name is the IR name of the tensor.
	Name string `json:"name"`
	// Shape is the logical shape, NCHW or NC, with Shape[0] == Batch.
	Shape []int `json:"shape"`
	// DType is the element type: "f32", "bf16", "f16" or "i8"; "" (manifests
	// written before the field existed) means f32.
	DType string `json:"dtype,omitempty"`
	// Offset is where the tensor starts, in elements of DType from the arena
	// base (ElemSize()*Offset bytes, which must be a multiple of the element
	// size by construction). The tensor is stored plain row-major from there.
	Offset int64 `json:"offset"`
}

// dtypeSizes are the element sizes of the dtypes a TensorInfo may declare
// (the IR's dtype names; package rt does not import ir).
var dtypeSizes = map[string]int64{"": 4, "f32": 4, "bf16": 2, "f16": 2, "i8": 1}

// ElemSize is the size of one element of t in bytes, 0 for an unknown dtype.
func (t TensorInfo) ElemSize() int64 { return dtypeSizes[t.DType] }

// ByteOffset is the tensor's offset from the arena base in bytes.
func (t TensorInfo) ByteOffset() int64 { return t.Offset * t.ElemSize() }

// StateInfo places one mutable parameter. Before a run the runtime writes
// the parameter's current value at Offset in the arena; after the run it
// takes the new value from Update. All offsets count float32 elements
// (state is f32: the arena is).
type StateInfo struct {
	// Name is the parameter's name (its checkpoint key).
	Name string `json:"name"`
	// Shape is its shape.
	Shape []int `json:"shape"`
	// Init is where its initial value starts in the weights blob.
	Init int64 `json:"init"`
	// Offset is where the kernels read it in the arena.
	Offset int64 `json:"offset"`
	// Update is where the run leaves its new value in the arena.
	Update int64 `json:"update"`
}

// KernelInfo describes one kernel of the shared object.
type KernelInfo struct {
	// Name is the kernel's base symbol, without the ISA suffix.
	Name string `json:"name"`
	// Label is the IR node the kernel computes.
	Label string `json:"label"`
	// Op is the IR operation, e.g. "conv2d".
	Op string `json:"op"`
	// Tiles is the number of work tiles the kernel splits into.
	Tiles int64 `json:"tiles"`
	// MACs is the number of multiply-accumulates the kernel performs.
	MACs int64 `json:"macs"`
}

// Preprocess is the image preprocessing a network expects: resize so that
// the center crop of CropPct covers Size×Size, crop, scale to [0,1], then
// (x-Mean)/Std per RGB channel.
type Preprocess struct {
	// Size is the side of the square network input, e.g. 299.
	Size int `json:"size"`
	// CropPct is the fraction of the resized image kept by the center crop,
	// in (0, 1], e.g. 0.875.
	CropPct float64 `json:"crop_pct"`
	// Mean is subtracted per RGB channel after scaling to [0,1].
	Mean [3]float64 `json:"mean"`
	// Std divides per RGB channel after subtracting Mean.
	Std [3]float64 `json:"std"`
	// Interpolation names the resampling filter, e.g. "bicubic".
	Interpolation string `json:"interpolation"`
}

// ParseManifest decodes and validates a JSON manifest. Unknown fields are
// rejected, so a producer and this runtime that disagree on the format fail
// loudly instead of silently dropping data.
func ParseManifest(b []byte) (*Manifest, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("manifest: trailing data after the JSON object")
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// isaArch maps each known ISA (a CPU target of the target table) to its
// architecture.
var isaArch = func() map[string]string {
	m := map[string]string{}
	for _, t := range target.Targets() {
		if t.Kind == target.CPU {
			m[t.Name] = t.Arch
		}
	}
	return m
}()

// knownISAs lists the ISAs in preference order, best first per architecture
// (the target table's order).
var knownISAs = target.CPUNames()

// Validate checks the manifest for internal consistency: version, arch and
// ISAs, sizes, the input and output lying inside the arena, labels matching
// the output.
func (m *Manifest) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("manifest: "+format, args...)
	}
	if m.Version != ManifestVersion {
		return bad("version %d unsupported (this runtime reads version %d)", m.Version, ManifestVersion)
	}
	if m.Batch < 1 {
		return bad("batch %d: want at least 1", m.Batch)
	}
	if m.Arch != "amd64" && m.Arch != "arm64" {
		return bad("arch %q: want amd64 or arm64", m.Arch)
	}
	if len(m.ISAs) == 0 {
		return bad("no ISAs listed")
	}
	seen := map[string]bool{}
	for _, isa := range m.ISAs {
		arch, ok := isaArch[isa]
		if !ok {
			return bad("unknown ISA %q (known: %s)", isa, strings.Join(knownISAs, ", "))
		}
		if arch != m.Arch {
			return bad("ISA %s is for %s, but arch is %s", isa, arch, m.Arch)
		}
		if seen[isa] {
			return bad("ISA %s listed twice", isa)
		}
		seen[isa] = true
		if err := checkFeatures(isa, arch, m.Features[isa]); err != nil {
			return bad("%v", err)
		}
	}
	for isa := range m.Features {
		if !seen[isa] {
			return bad("features listed for ISA %s, which is not in isas", isa)
		}
	}
	if m.ArenaBytes <= 0 {
		return bad("arena_bytes %d: want > 0", m.ArenaBytes)
	}
	if m.WeightsBytes < 0 {
		return bad("weights_bytes %d: want >= 0", m.WeightsBytes)
	}
	for _, t := range []struct {
		what string
		ti   *TensorInfo
	}{{"input", &m.Input}, {"output", &m.Output}} {
		if _, err := m.tensorSpan(t.what, t.ti); err != nil {
			return err
		}
	}
	stateNames := map[string]bool{}
	for i, st := range m.State {
		if st.Name == "" || stateNames[st.Name] {
			return bad("state %d: name %q is empty or repeated", i, st.Name)
		}
		stateNames[st.Name] = true
		n, err := tensor.NumelOf(st.Shape)
		if err != nil || n == 0 {
			return bad("state %q: bad shape %s", st.Name, tensor.ShapeString(st.Shape))
		}
		end := int64(n) * 4
		switch {
		case st.Init < 0 || st.Init*4+end > m.WeightsBytes:
			return bad("state %q: initial value [%d, +%d floats) outside the weights (%d bytes)", st.Name, st.Init, n, m.WeightsBytes)
		case st.Offset < 0 || st.Offset*4+end > m.ArenaBytes, st.Update < 0 || st.Update*4+end > m.ArenaBytes:
			return bad("state %q: offset %d or update %d (+%d floats) outside the arena (%d bytes)", st.Name, st.Offset, st.Update, n, m.ArenaBytes)
		}
	}
	tapNames := map[string]bool{}
	for i := range m.Taps {
		t := &m.Taps[i]
		if t.Name == "" || tapNames[t.Name] {
			return bad("tap %d: name %q is empty or repeated", i, t.Name)
		}
		tapNames[t.Name] = true
		if _, err := m.tensorSpan("tap", t); err != nil {
			return err
		}
	}
	for i, k := range m.Kernels {
		if k.Name == "" {
			return bad("kernel %d has no name", i)
		}
		if k.Tiles < 0 || k.MACs < 0 {
			return bad("kernel %d (%s): negative tiles or MACs", i, k.Name)
		}
	}
	if p := m.Preprocess; p != nil {
		if p.Size < 1 {
			return bad("preprocess size %d: want > 0", p.Size)
		}
		if !(p.CropPct > 0 && p.CropPct <= 1) {
			return bad("preprocess crop_pct %v: want in (0, 1]", p.CropPct)
		}
		for c, s := range p.Std {
			if !(s > 0) {
				return bad("preprocess std[%d] = %v: want > 0", c, s)
			}
		}
	}
	if c := m.Checksums; c != nil {
		for _, d := range []struct{ what, hex string }{{"shared_object", c.SharedObject}, {"weights", c.Weights}} {
			if !isSHA256Hex(d.hex) {
				return bad("checksums.%s %q: want 64 lowercase hexadecimal digits (SHA-256)", d.what, d.hex)
			}
		}
	}
	if m.Labels != nil {
		n, _ := tensor.NumelOf(m.Output.Shape)
		if per := n / m.Batch; len(m.Labels) != per {
			return bad("%d labels, but the output %s has %d values per batch item",
				len(m.Labels), tensor.ShapeString(m.Output.Shape), per)
		}
	}
	return nil
}

// tensorSpan checks that ti is a valid tensor of batch m.Batch lying inside
// the arena and returns its element count.
func (m *Manifest) tensorSpan(what string, ti *TensorInfo) (int, error) {
	if len(ti.Shape) == 0 {
		return 0, fmt.Errorf("manifest: %s %q has no shape", what, ti.Name)
	}
	for _, d := range ti.Shape {
		if d < 1 {
			return 0, fmt.Errorf("manifest: %s %q shape %s: dimensions must be positive", what, ti.Name, tensor.ShapeString(ti.Shape))
		}
	}
	if ti.Shape[0] != m.Batch {
		return 0, fmt.Errorf("manifest: %s %q shape %s does not start with batch %d", what, ti.Name, tensor.ShapeString(ti.Shape), m.Batch)
	}
	n, err := tensor.NumelOf(ti.Shape)
	if err != nil {
		return 0, fmt.Errorf("manifest: %s %q: %w", what, ti.Name, err)
	}
	size := ti.ElemSize()
	if size == 0 {
		return 0, fmt.Errorf("manifest: %s %q: unknown dtype %q (want f32, bf16, f16 or i8)", what, ti.Name, ti.DType)
	}
	if elems := m.ArenaBytes / size; ti.Offset < 0 || ti.Offset > elems || int64(n) > elems-ti.Offset {
		unit := ti.DType // offsets count elements of the dtype: "float offset" for f32
		if size == 4 {
			unit = "float"
		}
		return 0, fmt.Errorf("manifest: %s %q (%s at %s offset %d) does not fit in the %d-byte arena",
			what, ti.Name, tensor.ShapeString(ti.Shape), unit, ti.Offset, m.ArenaBytes)
	}
	return n, nil
}

// clone returns a deep copy of m.
func (m Manifest) clone() Manifest {
	m.ISAs = slices.Clone(m.ISAs)
	if m.Features != nil {
		fs := make(map[string][]string, len(m.Features))
		for k, v := range m.Features {
			fs[k] = slices.Clone(v)
		}
		m.Features = fs
	}
	m.Input.Shape = slices.Clone(m.Input.Shape)
	m.Output.Shape = slices.Clone(m.Output.Shape)
	if m.State != nil {
		m.State = slices.Clone(m.State)
		for i := range m.State {
			m.State[i].Shape = slices.Clone(m.State[i].Shape)
		}
	}
	if m.Taps != nil {
		m.Taps = slices.Clone(m.Taps)
		for i := range m.Taps {
			m.Taps[i].Shape = slices.Clone(m.Taps[i].Shape)
		}
	}
	m.Kernels = slices.Clone(m.Kernels)
	m.Labels = slices.Clone(m.Labels)
	if m.Preprocess != nil {
		p := *m.Preprocess
		m.Preprocess = &p
	}
	if m.Checksums != nil {
		c := *m.Checksums
		m.Checksums = &c
	}
	return m
}
