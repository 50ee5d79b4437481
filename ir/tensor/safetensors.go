package tensor

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The safetensors format (https://github.com/huggingface/safetensors):
//
//	bytes 0-7: uint64 LE N, the length of the JSON header
//	N bytes:   UTF-8 JSON object mapping each tensor name to
//	           {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]},
//	           plus an optional "__metadata__" object of string values;
//	           may be padded with trailing spaces
//	the rest:  the data section; offsets are relative to its start

// MaxSafetensorsHeader is the largest JSON header [ReadSafetensors] accepts
// (100 MiB, the limit of the reference implementation).
const MaxSafetensorsHeader = 100 << 20

const safetensorsMetadataKey = "__metadata__"

// File is the content of a safetensors file.
type File struct {
	// Names lists the tensors in the order of their data offsets.
	Names []string
	// Tensors maps each name in Names to its values, converted to float32.
	Tensors map[string]*Tensor
	// Metadata is the "__metadata__" string map; nil if the file has none.
	Metadata map[string]string
	// Unread lists, in offset order, the tensors whose data was not read
	// because the keep function of [ReadSafetensorsSelect] declined them.
	Unread []SafetensorsHeader
}

// SafetensorsHeader describes one tensor as the file's JSON header declares
// it, before any of its data is read.
type SafetensorsHeader struct {
	Name  string
	DType string // the format's dtype name: "F32", "F16", "BF16", ...
	Shape []int
	Bytes int64 // the length of its data range
}

// dtypeSize gives the element size of every dtype the format defines, so
// that offsets can be validated even for tensors that cannot be loaded.
var dtypeSize = map[string]int{
	"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
	"I16": 2, "U16": 2, "F16": 2, "BF16": 2,
	"I32": 4, "U32": 4, "F32": 4,
	"I64": 8, "U64": 8, "F64": 8,
}

type stEntry struct {
	name       string
	dtype      string
	shape      []int
	numel      int
	begin, end int64
	skip       bool
}

// ReadSafetensors reads a safetensors file of size bytes from r. name is used
// in error messages only (normally the file path).
//
// Tensors of dtype F32, F16 and BF16 are loaded and converted to float32
// exactly (F16 subnormals, infinities and NaNs included). Any other dtype is
// an error naming the tensor, except that an I64 tensor with at most one
// element whose name ends in "num_batches_tracked" (a BatchNorm counter
// present in timm checkpoints) is validated and then skipped.
//
// A file in another format that people commonly mistake for safetensors (a
// PyTorch checkpoint written by torch.save, a NumPy array, HDF5) is
// recognised from its first bytes and the error says how to convert it
// (see sniffFormat).
//
// The file is validated as strictly as the reference implementation does:
// the header length must be at most [MaxSafetensorsHeader] and fit in the
// file; the header must be UTF-8 JSON with no duplicate keys, each entry
// having exactly the fields dtype, shape (non-negative ints) and
// data_offsets ([begin, end] with begin <= end), and "__metadata__" holding
// only strings; each tensor's byte range must lie within the data section and
// have length numel × dtype size; and the ranges, taken in offset order, must
// not overlap and must cover the data section with no gaps and nothing after
// the last tensor. Errors name the file and, where it applies, the tensor.
// ReadSafetensors never panics on malformed input.
func ReadSafetensors(r io.ReaderAt, size int64, name string) (*File, error) {
	return ReadSafetensorsSelect(r, size, name, nil)
}

// ReadSafetensorsSelect is [ReadSafetensors] that reads the data of only the
// tensors keep accepts: the whole header is read and validated first, then
// keep is called with each tensor's header (name, dtype, shape, byte size),
// and the data of a tensor it declines is neither read nor allocated; the
// tensor is listed in File.Unread instead. A caller that knows which
// tensors it needs (cmd/kiln: the network's parameters, by name and shape)
// thereby refuses an unexpected tensor of any declared size, a 4 GiB one
// included, at the cost of reading the header. A nil keep reads every
// tensor.
func ReadSafetensorsSelect(r io.ReaderAt, size int64, name string, keep func(SafetensorsHeader) bool) (*File, error) {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("read safetensors %s: "+format, append([]any{name}, args...)...)
	}
	head := make([]byte, max(0, min(size, sniffLen)))
	k, _ := r.ReadAt(head, 0) // a read error is reported below
	if hint := sniffFormat(head[:k]); hint != "" {
		return nil, fail("%s", hint)
	}
	if size < 8 {
		return nil, fail("truncated: file has %d bytes, need at least 8 for the header length", size)
	}
	var lenBuf [8]byte
	if err := readFullAt(r, lenBuf[:], 0); err != nil {
		return nil, fail("reading header length: %v", err)
	}
	n := binary.LittleEndian.Uint64(lenBuf[:])
	if n > MaxSafetensorsHeader {
		return nil, fail("header length %d exceeds the %d-byte limit", n, MaxSafetensorsHeader)
	}
	if n > uint64(size-8) {
		return nil, fail("truncated: header length %d but only %d bytes follow", n, size-8)
	}
	if n < 2 {
		return nil, fail("header length %d is too short for a JSON object", n)
	}
	hdr := make([]byte, n)
	if err := readFullAt(r, hdr, 8); err != nil {
		return nil, fail("reading header: %v", err)
	}
	dataStart := 8 + int64(n)
	dataLen := size - dataStart
	if !utf8.Valid(hdr) {
		return nil, fail("header is not valid UTF-8")
	}
	top, err := jsonObject(hdr)
	if err != nil {
		return nil, fail("bad JSON header: %v", err)
	}
	f := &File{Tensors: map[string]*Tensor{}}
	var entries []*stEntry
	for _, kv := range top {
		if kv.key == safetensorsMetadataKey {
			md, err := jsonObject(kv.val)
			if err != nil {
				return nil, fail("bad JSON header: %s: %v", safetensorsMetadataKey, err)
			}
			f.Metadata = make(map[string]string, len(md))
			for _, m := range md {
				var s string
				if len(m.val) == 0 || m.val[0] != '"' || json.Unmarshal(m.val, &s) != nil {
					return nil, fail("bad JSON header: %s[%q] is %s; want a string", safetensorsMetadataKey, m.key, clip(string(m.val)))
				}
				f.Metadata[m.key] = s
			}
			continue
		}
		e, err := parseSTEntry(kv.key, kv.val)
		if err != nil {
			return nil, fail("tensor %q: %v", kv.key, err)
		}
		if e.end > dataLen {
			return nil, fail("tensor %q: data_offsets [%d, %d] out of range: data section has %d bytes", e.name, e.begin, e.end, dataLen)
		}
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool {
		a, b := entries[i], entries[j]
		if a.begin != b.begin {
			return a.begin < b.begin
		}
		if a.end != b.end {
			return a.end < b.end
		}
		return a.name < b.name
	})
	var pos int64
	for i, e := range entries {
		if e.begin < pos {
			return nil, fail("tensor %q: data_offsets [%d, %d] overlap tensor %q [%d, %d]",
				e.name, e.begin, e.end, entries[i-1].name, entries[i-1].begin, entries[i-1].end)
		}
		if e.begin > pos {
			return nil, fail("tensor %q: gap of %d unused bytes before its data_offsets [%d, %d]", e.name, e.begin-pos, e.begin, e.end)
		}
		pos = e.end
	}
	if pos != dataLen {
		return nil, fail("%d bytes of trailing data after the last tensor (data section %d bytes, tensors end at %d)", dataLen-pos, dataLen, pos)
	}
	// Check that r really holds size bytes before allocating for them.
	if dataLen > 0 {
		var last [1]byte
		if err := readFullAt(r, last[:], size-1); err != nil {
			return nil, fail("truncated: cannot read byte %d of %d: %v", size-1, size, err)
		}
	}
	var raw []byte
	for _, e := range entries {
		if e.skip {
			continue
		}
		if keep != nil {
			h := SafetensorsHeader{Name: e.name, DType: e.dtype, Shape: e.shape, Bytes: e.end - e.begin}
			if !keep(h) {
				f.Unread = append(f.Unread, h)
				continue
			}
		}
		nb := int(e.end - e.begin)
		if cap(raw) < nb {
			raw = make([]byte, nb)
		}
		raw = raw[:nb]
		if err := readFullAt(r, raw, dataStart+e.begin); err != nil {
			return nil, fail("tensor %q: reading data: %v", e.name, err)
		}
		data := make([]float32, e.numel)
		switch e.dtype {
		case "F32":
			for i := range data {
				data[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
			}
		case "F16":
			for i := range data {
				data[i] = F16ToF32(binary.LittleEndian.Uint16(raw[2*i:]))
			}
		case "BF16":
			for i := range data {
				data[i] = BF16ToF32(binary.LittleEndian.Uint16(raw[2*i:]))
			}
		}
		f.Names = append(f.Names, e.name)
		f.Tensors[e.name] = &Tensor{Shape: e.shape, Data: data}
	}
	return f, nil
}

// ReadSafetensorsFile reads the safetensors file at path; see
// [ReadSafetensors].
func ReadSafetensorsFile(path string) (*File, error) {
	return ReadSafetensorsFileSelect(path, nil)
}

// ReadSafetensorsFileSelect reads the safetensors file at path, reading the
// data of only the tensors keep accepts; see [ReadSafetensorsSelect].
func ReadSafetensorsFileSelect(path string, keep func(SafetensorsHeader) bool) (*File, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read safetensors: %w", err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, fmt.Errorf("read safetensors: %w", err)
	}
	return ReadSafetensorsSelect(fh, st.Size(), path, keep)
}

func readFullAt(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

func parseSTEntry(name string, raw json.RawMessage) (*stEntry, error) {
	fields, err := jsonObject(raw)
	if err != nil {
		return nil, fmt.Errorf("bad JSON header: %v", err)
	}
	e := &stEntry{name: name}
	var haveDtype, haveShape, haveOffsets bool
	for _, kv := range fields {
		switch kv.key {
		case "dtype":
			if len(kv.val) == 0 || kv.val[0] != '"' || json.Unmarshal(kv.val, &e.dtype) != nil {
				return nil, fmt.Errorf("dtype is %s; want a string", clip(string(kv.val)))
			}
			haveDtype = true
		case "shape":
			dims, err := jsonInts(kv.val)
			if err != nil {
				return nil, fmt.Errorf("shape: %v", err)
			}
			e.shape = make([]int, len(dims))
			for i, d := range dims {
				if d < 0 {
					return nil, fmt.Errorf("shape %s: negative dimension %d", kv.val, d)
				}
				if d > math.MaxInt {
					return nil, fmt.Errorf("shape %s: dimension %d overflows", kv.val, d)
				}
				e.shape[i] = int(d)
			}
			haveShape = true
		case "data_offsets":
			offs, err := jsonInts(kv.val)
			if err != nil {
				return nil, fmt.Errorf("data_offsets: %v", err)
			}
			if len(offs) != 2 {
				return nil, fmt.Errorf("data_offsets %s: want [begin, end]", kv.val)
			}
			if offs[0] < 0 || offs[1] < offs[0] {
				return nil, fmt.Errorf("data_offsets %s: want 0 <= begin <= end", kv.val)
			}
			e.begin, e.end = offs[0], offs[1]
			haveOffsets = true
		default:
			return nil, fmt.Errorf("unexpected field %q; want dtype, shape, data_offsets", kv.key)
		}
	}
	switch {
	case !haveDtype:
		return nil, errors.New(`missing field "dtype"`)
	case !haveShape:
		return nil, errors.New(`missing field "shape"`)
	case !haveOffsets:
		return nil, errors.New(`missing field "data_offsets"`)
	}
	size, ok := dtypeSize[e.dtype]
	if !ok {
		return nil, fmt.Errorf("unknown dtype %q", e.dtype)
	}
	numel, err := NumelOf(e.shape)
	if err != nil {
		return nil, fmt.Errorf("shape %s overflows", ShapeString(e.shape))
	}
	if numel > math.MaxInt/size {
		return nil, fmt.Errorf("shape %s overflows", ShapeString(e.shape))
	}
	e.numel = numel
	if want := int64(numel) * int64(size); e.end-e.begin != want {
		return nil, fmt.Errorf("data_offsets [%d, %d] span %d bytes, but %s %s needs %d",
			e.begin, e.end, e.end-e.begin, e.dtype, ShapeString(e.shape), want)
	}
	switch e.dtype {
	case "F32", "F16", "BF16":
	case "I64":
		if numel <= 1 && strings.HasSuffix(name, "num_batches_tracked") {
			e.skip = true
			break
		}
		fallthrough
	default:
		return nil, fmt.Errorf("dtype %s not supported; want F32, F16 or BF16", e.dtype)
	}
	return e, nil
}

type jsonKV struct {
	key string
	val json.RawMessage
}

// jsonObject parses b as one JSON object (surrounding whitespace allowed) and
// returns its members in order, rejecting duplicate keys.
func jsonObject(b []byte) ([]jsonKV, error) {
	kvs, err := jsonObjectRaw(b)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		err = errors.New("unexpected end of JSON")
	}
	return kvs, err
}

func jsonObjectRaw(b []byte) ([]jsonKV, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("want an object, got %v", tok)
	}
	var out []jsonKV
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		k, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("want a string key, got %v", tok)
		}
		if seen[k] {
			return nil, fmt.Errorf("duplicate key %q", k)
		}
		seen[k] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		out = append(out, jsonKV{k, v})
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		if err == nil {
			return nil, errors.New("unexpected data after the JSON object")
		}
		return nil, err
	}
	return out, nil
}

// jsonInts parses b as a JSON array of integers.
func jsonInts(b json.RawMessage) ([]int64, error) {
	var nums []json.Number
	if len(b) == 0 || b[0] != '[' {
		return nil, fmt.Errorf("%s is not an array of integers", clip(string(b)))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&nums); err != nil {
		return nil, fmt.Errorf("%s is not an array of integers", clip(string(b)))
	}
	out := make([]int64, len(nums))
	for i, n := range nums {
		v, err := strconv.ParseInt(string(n), 10, 64)
		if err != nil {
			if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
				return nil, fmt.Errorf("%s: %s overflows", clip(string(b)), n)
			}
			return nil, fmt.Errorf("%s: %s is not an integer", clip(string(b)), n)
		}
		out[i] = v
	}
	return out, nil
}

// F16ToF32 converts IEEE-754 binary16 bits to float32. The conversion is
// exact for every input: normal and subnormal numbers, signed zeros,
// infinities, and NaNs (sign and payload kept).
func F16ToF32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // infinity or NaN
		return math.Float32frombits(sign | 0xff<<23 | mant<<13)
	case exp != 0: // normal
		return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
	case mant == 0: // signed zero
		return math.Float32frombits(sign)
	default: // subnormal: mant × 2^-24, a normal float32
		v := float32(mant) * 0x1p-24
		return math.Float32frombits(sign | math.Float32bits(v))
	}
}

// BF16ToF32 converts bfloat16 bits (the top half of a float32) to float32,
// exactly.
func BF16ToF32(b uint16) float32 {
	return math.Float32frombits(uint32(b) << 16)
}

// WriteSafetensors writes the tensors in f to w as a safetensors file of
// dtype F32, with metadata (if non-empty) as "__metadata__".
//
// The layout is the one of the shipped fixtures (fixtures README section 4),
// which is also what Python's json.dumps(header, sort_keys=True,
// separators=(",", ":")) produces: all header keys sorted in byte order
// (Go sort.Strings), "__metadata__" included, each entry written as
// {"data_offsets":[b,e],"dtype":"F32","shape":[...]}, strings escaped as
// Python does by default (non-ASCII as \uXXXX), and the header padded with
// spaces to a multiple of 8 bytes. The data follows in sorted name order,
// back to back, as little-endian float32. Rewriting a fixture from its
// [ReadSafetensors] result therefore reproduces it byte for byte.
//
// Nil tensors, tensors whose data length does not match their shape, the
// name "__metadata__", and names or metadata that are not valid UTF-8 are
// errors.
func WriteSafetensors(w io.Writer, f map[string]*Tensor, metadata map[string]string) error {
	names := make([]string, 0, len(f))
	for name, t := range f {
		if name == safetensorsMetadataKey {
			return fmt.Errorf("write safetensors: tensor name %q is reserved", name)
		}
		if !utf8.ValidString(name) {
			return fmt.Errorf("write safetensors: tensor name %q is not valid UTF-8", name)
		}
		if err := validTensor(t); err != nil {
			return fmt.Errorf("write safetensors: tensor %q: %w", name, err)
		}
		names = append(names, name)
	}
	sort.Strings(names)
	keys := append([]string{}, names...)
	if len(metadata) > 0 {
		keys = append(keys, safetensorsMetadataKey)
		sort.Strings(keys)
	}
	var h bytes.Buffer
	h.WriteByte('{')
	var off int64
	for i, k := range keys {
		if i > 0 {
			h.WriteByte(',')
		}
		pyJSONString(&h, k)
		h.WriteByte(':')
		if k == safetensorsMetadataKey {
			mk := make([]string, 0, len(metadata))
			for m, v := range metadata {
				if !utf8.ValidString(m) || !utf8.ValidString(v) {
					return fmt.Errorf("write safetensors: metadata %q: not valid UTF-8", m)
				}
				mk = append(mk, m)
			}
			sort.Strings(mk)
			h.WriteByte('{')
			for j, m := range mk {
				if j > 0 {
					h.WriteByte(',')
				}
				pyJSONString(&h, m)
				h.WriteByte(':')
				pyJSONString(&h, metadata[m])
			}
			h.WriteByte('}')
			continue
		}
		t := f[k]
		end := off + 4*int64(len(t.Data))
		fmt.Fprintf(&h, `{"data_offsets":[%d,%d],"dtype":"F32","shape":[`, off, end)
		for j, d := range t.Shape {
			if j > 0 {
				h.WriteByte(',')
			}
			h.WriteString(strconv.Itoa(d))
		}
		h.WriteString("]}")
		off = end
	}
	h.WriteByte('}')
	for h.Len()%8 != 0 {
		h.WriteByte(' ')
	}
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(h.Len()))
	if _, err := w.Write(lenBuf[:]); err != nil {
		return fmt.Errorf("write safetensors: %w", err)
	}
	if _, err := w.Write(h.Bytes()); err != nil {
		return fmt.Errorf("write safetensors: %w", err)
	}
	for _, name := range names {
		if err := writeF32LE(w, f[name].Data); err != nil {
			return fmt.Errorf("write safetensors: %w", err)
		}
	}
	return nil
}

// WriteSafetensorsFile writes a safetensors file at path with
// [WriteSafetensors], atomically (see [WriteFileAtomic]).
func WriteSafetensorsFile(path string, f map[string]*Tensor, metadata map[string]string) error {
	return WriteFileAtomic(path, func(w io.Writer) error { return WriteSafetensors(w, f, metadata) })
}

// pyJSONString writes s as a JSON string the way Python's json.dumps does
// with its default ensure_ascii=True: '"' and '\\' backslash-escaped,
// \b \f \n \r \t by name, every other byte outside ' '..'~' as \uXXXX in
// lower-case hex (UTF-16 surrogate pairs above U+FFFF). s must be valid
// UTF-8.
func pyJSONString(b *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	u := func(r rune) {
		b.WriteString(`\u`)
		b.WriteByte(hex[r>>12&0xf])
		b.WriteByte(hex[r>>8&0xf])
		b.WriteByte(hex[r>>4&0xf])
		b.WriteByte(hex[r&0xf])
	}
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteByte(byte(r))
		case r == '\b':
			b.WriteString(`\b`)
		case r == '\f':
			b.WriteString(`\f`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r >= ' ' && r <= '~':
			b.WriteByte(byte(r))
		case r > 0xffff:
			r -= 0x10000
			u(0xd800 | (r >> 10 & 0x3ff))
			u(0xdc00 | (r & 0x3ff))
		default:
			u(r)
		}
	}
	b.WriteByte('"')
}
