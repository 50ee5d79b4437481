package tensor

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
)

// The .npy format (https://numpy.org/neps/nep-0001-npy-format.html):
//
//	"\x93NUMPY" major minor
//	header length: uint16 LE (version 1.0) or uint32 LE (version 2.0)
//	header: ASCII Python dict literal, e.g.
//	        {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
//	        padded with spaces and ending in '\n'
//	data:   the raw array bytes

const (
	npyMagic    = "\x93NUMPY"
	npyAlign    = 64 // numpy's ARRAY_ALIGN
	npyMaxDepth = 16 // nesting limit for the header literal parser
	// npyGrowthDigits is numpy's GROWTH_AXIS_MAX_DIGITS: numpy >= 1.23 pads
	// the header so the first axis can later grow to 21 digits in place.
	npyGrowthDigits = 21
)

// ReadNPY reads a NumPy .npy file (format version 1.0 or 2.0) from r. name
// is used in error messages only (normally the file path). The array must be
// in C order with dtype '<f4' (float32) or '<f8' (float64, rounded to the
// nearest float32). Malformed input of any kind yields an error that names
// the file and the cause; ReadNPY never panics. The whole input is read
// before the data is decoded, so a header that claims a huge shape cannot
// cause a large allocation.
func ReadNPY(r io.Reader, name string) (*Tensor, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read npy %s: %w", name, err)
	}
	return parseNPY(b, name)
}

// ReadNPYFile reads the .npy file at path; see [ReadNPY].
func ReadNPYFile(path string) (*Tensor, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read npy: %w", err)
	}
	return parseNPY(b, path)
}

func parseNPY(b []byte, name string) (*Tensor, error) {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("read npy %s: "+format, append([]any{name}, args...)...)
	}
	h, data, err := npyFrame(b, name)
	if err != nil {
		return nil, err
	}
	var itemsize int
	switch h.descr {
	case "<f4":
		itemsize = 4
	case "<f8":
		itemsize = 8
	default:
		return nil, fail("dtype %s not supported; want '<f4'", h.descrRepr)
	}
	numel, err := npyNumel(h, data, itemsize, name)
	if err != nil {
		return nil, err
	}
	out := make([]float32, numel)
	if itemsize == 4 {
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
		}
	} else {
		for i := range out {
			out[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(data[8*i:])))
		}
	}
	return &Tensor{Shape: h.shape, Data: out}, nil
}

// npyFrame checks the framing of a .npy file (magic, version, header length)
// and parses its header; it returns the header and the data bytes after it.
// Errors name the file; the dtype is the caller's to check.
func npyFrame(b []byte, name string) (*npyHeader, []byte, error) {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("read npy %s: "+format, append([]any{name}, args...)...)
	}
	if len(b) < len(npyMagic) || string(b[:len(npyMagic)]) != npyMagic {
		if len(b) < len(npyMagic) && string(b) == npyMagic[:len(b)] {
			return nil, nil, fail("truncated header: file has only %d bytes", len(b))
		}
		return nil, nil, fail(`bad magic: not a .npy file (want "\x93NUMPY", got %q)`, b[:min(len(b), len(npyMagic))])
	}
	if len(b) < 8 {
		return nil, nil, fail("truncated header: file has only %d bytes", len(b))
	}
	major, minor := b[6], b[7]
	var hlen, off int
	switch {
	case major == 1 && minor == 0:
		if len(b) < 10 {
			return nil, nil, fail("truncated header: file has only %d bytes", len(b))
		}
		hlen, off = int(binary.LittleEndian.Uint16(b[8:10])), 10
	case major == 2 && minor == 0:
		if len(b) < 12 {
			return nil, nil, fail("truncated header: file has only %d bytes", len(b))
		}
		h := binary.LittleEndian.Uint32(b[8:12])
		if uint64(h) > uint64(len(b)-12) {
			return nil, nil, fail("truncated header: header length %d but only %d bytes follow", h, len(b)-12)
		}
		hlen, off = int(h), 12
	default:
		return nil, nil, fail("unsupported format version %d.%d; want 1.0 or 2.0", major, minor)
	}
	if hlen > len(b)-off {
		return nil, nil, fail("truncated header: header length %d but only %d bytes follow", hlen, len(b)-off)
	}
	hdr := b[off : off+hlen]
	data := b[off+hlen:]

	h, err := parseNPYHeader(hdr)
	if err != nil {
		return nil, nil, fail("malformed header: %v", err)
	}
	if h.fortran {
		return nil, nil, fail("fortran_order True not supported; want C order (fortran_order False)")
	}
	return h, data, nil
}

// npyNumel checks that data holds exactly the array of header h with
// elements of itemsize bytes and returns its element count.
func npyNumel(h *npyHeader, data []byte, itemsize int, name string) (int, error) {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("read npy %s: "+format, append([]any{name}, args...)...)
	}
	numel := 1
	for _, d := range h.shape {
		if d == 0 {
			numel = 0
		}
	}
	if numel != 0 {
		for _, d := range h.shape {
			if numel > math.MaxInt/d {
				return 0, fail("shape %s overflows", shapeRepr(h.shape))
			}
			numel *= d
		}
	}
	if numel > math.MaxInt/itemsize {
		return 0, fail("shape %s overflows", shapeRepr(h.shape))
	}
	want := numel * itemsize
	if len(data) < want {
		return 0, fail("truncated data: shape %s of %s needs %d bytes, got %d", shapeRepr(h.shape), h.descr, want, len(data))
	}
	if len(data) > want {
		return 0, fail("trailing garbage: %d bytes after the %d data bytes of shape %s", len(data)-want, want, shapeRepr(h.shape))
	}
	return numel, nil
}

type npyHeader struct {
	descr     string // "" if descr is not a string
	descrRepr string // descr as written, for messages
	fortran   bool
	shape     []int
}

// parseNPYHeader parses the Python dict literal of a .npy header. It accepts
// what numpy's own reader accepts for simple dtypes: exactly the keys descr
// (a string), fortran_order (True/False) and shape (a tuple of non-negative
// ints), in any order, with an optional trailing comma, followed only by
// whitespace.
func parseNPYHeader(hdr []byte) (*npyHeader, error) {
	for _, c := range hdr {
		if c >= 0x80 || (c < 0x20 && c != '\n' && c != '\r' && c != '\t') {
			return nil, fmt.Errorf("header contains byte 0x%02x; want ASCII text", c)
		}
	}
	p := &pyParser{s: string(hdr)}
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.skipSpace()
	if p.i != len(p.s) {
		return nil, fmt.Errorf("unexpected %q after the header dict", clip(p.s[p.i:]))
	}
	if v.kind != pyDict {
		return nil, fmt.Errorf("header is not a dict: %s", clip(p.s))
	}
	h := &npyHeader{}
	seen := map[string]bool{}
	for i, k := range v.keys {
		val := v.items[i]
		if seen[k] {
			return nil, fmt.Errorf("duplicate key %q", k)
		}
		seen[k] = true
		switch k {
		case "descr":
			h.descrRepr = val.repr
			if val.kind == pyStr {
				h.descr = val.s
				h.descrRepr = "'" + val.s + "'"
			}
		case "fortran_order":
			if val.kind != pyBool {
				return nil, fmt.Errorf("fortran_order is %s; want True or False", val.repr)
			}
			h.fortran = val.b
		case "shape":
			if val.kind != pyTuple {
				return nil, fmt.Errorf("shape is %s; want a tuple of ints", val.repr)
			}
			h.shape = make([]int, len(val.items))
			for j, d := range val.items {
				if d.kind != pyInt {
					return nil, fmt.Errorf("shape %s: dimension %s is not an int", val.repr, d.repr)
				}
				n, err := strconv.ParseInt(d.s, 10, 64)
				if err != nil || n > math.MaxInt {
					if strings.HasPrefix(d.s, "-") {
						return nil, fmt.Errorf("shape %s: negative dimension %s", val.repr, d.s)
					}
					return nil, fmt.Errorf("shape %s: dimension %s overflows", val.repr, d.s)
				}
				if n < 0 {
					return nil, fmt.Errorf("shape %s: negative dimension %d", val.repr, n)
				}
				h.shape[j] = int(n)
			}
		default:
			return nil, fmt.Errorf("unexpected key %q; want descr, fortran_order, shape", k)
		}
	}
	for _, k := range []string{"descr", "fortran_order", "shape"} {
		if !seen[k] {
			return nil, fmt.Errorf("missing key %q", k)
		}
	}
	return h, nil
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

type pyKind int

const (
	pyStr pyKind = iota
	pyInt
	pyBool
	pyNone
	pyTuple
	pyList
	pyDict
)

type pyValue struct {
	kind  pyKind
	s     string // pyStr: the string; pyInt: the digits with optional '-'
	b     bool
	keys  []string  // pyDict
	items []pyValue // pyTuple, pyList, pyDict values
	repr  string    // source text, for messages
}

// pyParser parses the small subset of Python literals that occurs in .npy
// headers: strings, ints, True/False/None, tuples, lists and dicts with
// string keys.
type pyParser struct {
	s string
	i int
}

func (p *pyParser) skipSpace() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t' || p.s[p.i] == '\n' || p.s[p.i] == '\r') {
		p.i++
	}
}

func (p *pyParser) errorf(format string, args ...any) error {
	if p.i >= len(p.s) {
		return fmt.Errorf("unexpected end of header: "+format, args...)
	}
	return fmt.Errorf("at offset %d (%q): "+format, append([]any{p.i, clip(p.s[p.i:])}, args...)...)
}

func (p *pyParser) value(depth int) (pyValue, error) {
	if depth > npyMaxDepth {
		return pyValue{}, p.errorf("nesting too deep")
	}
	p.skipSpace()
	if p.i >= len(p.s) {
		return pyValue{}, p.errorf("want a value")
	}
	start := p.i
	var v pyValue
	var err error
	switch c := p.s[p.i]; {
	case c == '\'' || c == '"':
		v, err = p.str()
	case c == '-' || c == '+' || (c >= '0' && c <= '9'):
		v, err = p.integer()
	case c == '(' || c == '[':
		v, err = p.sequence(depth)
	case c == '{':
		v, err = p.dict(depth)
	case c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z':
		j := p.i
		for j < len(p.s) && (p.s[j] >= 'A' && p.s[j] <= 'Z' || p.s[j] >= 'a' && p.s[j] <= 'z' || p.s[j] == '_' || p.s[j] >= '0' && p.s[j] <= '9') {
			j++
		}
		switch p.s[p.i:j] {
		case "True":
			v = pyValue{kind: pyBool, b: true}
		case "False":
			v = pyValue{kind: pyBool}
		case "None":
			v = pyValue{kind: pyNone}
		default:
			return pyValue{}, p.errorf("unknown name %q", p.s[p.i:j])
		}
		p.i = j
	default:
		return pyValue{}, p.errorf("want a value")
	}
	if err != nil {
		return pyValue{}, err
	}
	v.repr = p.s[start:p.i]
	return v, nil
}

func (p *pyParser) str() (pyValue, error) {
	q := p.s[p.i]
	var b strings.Builder
	for j := p.i + 1; j < len(p.s); j++ {
		c := p.s[j]
		switch {
		case c == q:
			p.i = j + 1
			return pyValue{kind: pyStr, s: b.String()}, nil
		case c == '\\':
			if j+1 >= len(p.s) {
				p.i = len(p.s)
				return pyValue{}, p.errorf("unterminated string")
			}
			j++
			switch e := p.s[j]; e {
			case '\\', '\'', '"':
				b.WriteByte(e)
			default:
				b.WriteByte('\\')
				b.WriteByte(e)
			}
		case c == '\n':
			p.i = j
			return pyValue{}, p.errorf("newline in string")
		default:
			b.WriteByte(c)
		}
	}
	p.i = len(p.s)
	return pyValue{}, p.errorf("unterminated string")
}

func (p *pyParser) integer() (pyValue, error) {
	j := p.i
	neg := false
	if p.s[j] == '-' || p.s[j] == '+' {
		neg = p.s[j] == '-'
		j++
		for j < len(p.s) && p.s[j] == ' ' {
			j++
		}
	}
	d0 := j
	for j < len(p.s) && p.s[j] >= '0' && p.s[j] <= '9' {
		j++
	}
	if j == d0 {
		p.i = j
		return pyValue{}, p.errorf("want digits")
	}
	digits := p.s[d0:j]
	if j < len(p.s) && (p.s[j] == 'L' || p.s[j] == 'l') { // Python 2 long, written by old numpy
		j++
	}
	if j < len(p.s) && (p.s[j] == '.' || p.s[j] == 'e' || p.s[j] == 'E' || p.s[j] == '_' || p.s[j] == 'x' || p.s[j] == 'j') {
		p.i = j
		return pyValue{}, p.errorf("not an integer")
	}
	if len(digits) > 1 && digits[0] == '0' && strings.Trim(digits, "0") != "" {
		p.i = d0
		return pyValue{}, p.errorf("leading zeros in integer")
	}
	p.i = j
	if neg {
		digits = "-" + digits
	}
	return pyValue{kind: pyInt, s: digits}, nil
}

func (p *pyParser) sequence(depth int) (pyValue, error) {
	open := p.s[p.i]
	closer, kind := byte(')'), pyTuple
	if open == '[' {
		closer, kind = ']', pyList
	}
	p.i++
	var items []pyValue
	comma := false
	for {
		p.skipSpace()
		if p.i < len(p.s) && p.s[p.i] == closer {
			p.i++
			break
		}
		if len(items) > 0 && !comma {
			return pyValue{}, p.errorf("want ',' or %q", closer)
		}
		v, err := p.value(depth + 1)
		if err != nil {
			return pyValue{}, err
		}
		items = append(items, v)
		p.skipSpace()
		comma = p.i < len(p.s) && p.s[p.i] == ','
		if comma {
			p.i++
		}
	}
	if kind == pyTuple && len(items) == 1 && !comma {
		// "(x)" is just a parenthesized x, as in Python.
		return items[0], nil
	}
	return pyValue{kind: kind, items: items}, nil
}

func (p *pyParser) dict(depth int) (pyValue, error) {
	p.i++
	v := pyValue{kind: pyDict}
	comma := true
	for {
		p.skipSpace()
		if p.i < len(p.s) && p.s[p.i] == '}' {
			p.i++
			return v, nil
		}
		if !comma {
			return pyValue{}, p.errorf("want ',' or '}'")
		}
		if p.i >= len(p.s) || (p.s[p.i] != '\'' && p.s[p.i] != '"') {
			return pyValue{}, p.errorf("want a string key")
		}
		k, err := p.str()
		if err != nil {
			return pyValue{}, err
		}
		p.skipSpace()
		if p.i >= len(p.s) || p.s[p.i] != ':' {
			return pyValue{}, p.errorf("want ':' after key %q", k.s)
		}
		p.i++
		val, err := p.value(depth + 1)
		if err != nil {
			return pyValue{}, err
		}
		v.keys = append(v.keys, k.s)
		v.items = append(v.items, val)
		p.skipSpace()
		comma = p.i < len(p.s) && p.s[p.i] == ','
		if comma {
			p.i++
		}
	}
}

// shapeRepr formats a shape as a Python tuple, the way numpy writes it:
// "()", "(96,)", "(2, 1000)".
func shapeRepr(shape []int) string {
	var b strings.Builder
	b.WriteByte('(')
	for i, d := range shape {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Itoa(d))
	}
	if len(shape) == 1 {
		b.WriteByte(',')
	}
	b.WriteByte(')')
	return b.String()
}

// npyHeaderBytes returns the preamble and header that numpy 1.24's np.save
// writes for a C-order '<f4' array of the given shape: version 1.0 (2.0 only
// if the header does not fit in 65535 bytes), the dict with sorted keys, the
// growth padding for the first axis, then spaces and '\n' so the data begins
// at a multiple of 64 bytes.
func npyHeaderBytes(shape []int) []byte {
	h := "{'descr': '<f4', 'fortran_order': False, 'shape': " + shapeRepr(shape) + ", }"
	if len(shape) > 0 {
		if n := npyGrowthDigits - len(strconv.Itoa(shape[0])); n > 0 {
			h += strings.Repeat(" ", n)
		}
	}
	var buf bytes.Buffer
	for _, v := range []int{1, 2} {
		pre := 10
		if v == 2 {
			pre = 12
		}
		hlen := len(h) + 1
		pad := npyAlign - (pre+hlen)%npyAlign
		total := hlen + pad
		if v == 1 && total > math.MaxUint16 {
			continue
		}
		buf.WriteString(npyMagic)
		buf.WriteByte(byte(v))
		buf.WriteByte(0)
		if v == 1 {
			buf.Write(binary.LittleEndian.AppendUint16(nil, uint16(total)))
		} else {
			buf.Write(binary.LittleEndian.AppendUint32(nil, uint32(total)))
		}
		buf.WriteString(h)
		buf.WriteString(strings.Repeat(" ", pad))
		buf.WriteByte('\n')
		break
	}
	return buf.Bytes()
}

// WriteNPY writes t to w as a NumPy .npy file: format version 1.0, dtype
// '<f4', fortran_order False, C order. The header is laid out exactly as
// numpy 1.24's np.save lays it out (dict keys sorted, padded with spaces and
// ending in '\n' so the data begins at a multiple of 64 bytes), so saving an
// array read from such a file reproduces the file byte for byte. Only a
// header longer than 65535 bytes (a tensor of extreme rank) falls back to
// version 2.0, as numpy does.
func WriteNPY(w io.Writer, t *Tensor) error {
	if err := validTensor(t); err != nil {
		return fmt.Errorf("write npy: %w", err)
	}
	if _, err := w.Write(npyHeaderBytes(t.Shape)); err != nil {
		return fmt.Errorf("write npy: %w", err)
	}
	if err := writeF32LE(w, t.Data); err != nil {
		return fmt.Errorf("write npy: %w", err)
	}
	return nil
}

// WriteNPYFile writes t to the file at path with [WriteNPY], atomically
// (see [WriteFileAtomic]).
func WriteNPYFile(path string, t *Tensor) error {
	return WriteFileAtomic(path, func(w io.Writer) error { return WriteNPY(w, t) })
}

func validTensor(t *Tensor) error {
	if t == nil {
		return errors.New("nil tensor")
	}
	n, err := NumelOf(t.Shape)
	if err != nil {
		return err
	}
	if n != len(t.Data) {
		return fmt.Errorf("shape %s needs %d values, tensor has %d", ShapeString(t.Shape), n, len(t.Data))
	}
	return nil
}

// writeF32LE writes data as little-endian float32 through a fixed buffer.
func writeF32LE(w io.Writer, data []float32) error {
	const chunk = 16 << 10
	buf := make([]byte, 4*min(len(data), chunk))
	for len(data) > 0 {
		n := min(len(data), chunk)
		for i, v := range data[:n] {
			binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
		}
		if _, err := w.Write(buf[:4*n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}
