package tensor

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// mkST assembles a safetensors file from a raw JSON header and raw data.
func mkST(header string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(b, header...)
	return append(b, data...)
}

func readST(b []byte, name string) (*File, error) {
	return ReadSafetensors(bytes.NewReader(b), int64(len(b)), name)
}

func u16LE(vs ...uint16) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint16(b, v)
	}
	return b
}

var shippedSafetensors = []string{"v2_block35", "v2_mixed_5b", "v4_inception_a", "v4_mixed3a", "v4_mixed4a", "v4_mixed5a"}

// TestSafetensorsFixtures reads every shipped weights.safetensors and checks
// that writing its contents back, to memory and through
// WriteSafetensorsFile, reproduces the file byte for byte.
func TestSafetensorsFixtures(t *testing.T) {
	dir := fixtureDir(t)
	tmp := t.TempDir()
	for _, tag := range shippedSafetensors {
		p := filepath.Join(dir, "blocks", tag, "weights.safetensors")
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		f, err := ReadSafetensorsFile(p)
		if err != nil {
			t.Error(err)
			continue
		}
		if !sort.StringsAreSorted(f.Names) || len(f.Names) != len(f.Tensors) || len(f.Names) == 0 {
			t.Errorf("%s: names not sorted or incomplete: %v", tag, f.Names)
		}
		for _, k := range []string{"block", "timm_class", "full_model", "full_model_prefixes", "timm", "generator"} {
			if f.Metadata[k] == "" {
				t.Errorf("%s: metadata %q missing", tag, k)
			}
		}
		var buf bytes.Buffer
		if err := WriteSafetensors(&buf, f.Tensors, f.Metadata); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), raw) {
			n := int(binary.LittleEndian.Uint64(raw))
			t.Errorf("%s: rewritten file differs (%d vs %d bytes)\n got header %.300q\nwant header %.300q",
				tag, buf.Len(), len(raw), buf.Bytes()[8:min(buf.Len(), 8+n)], raw[8:8+n])
		}
		out := filepath.Join(tmp, tag+".safetensors")
		if err := WriteSafetensorsFile(out, f.Tensors, f.Metadata); err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, raw) {
			t.Errorf("%s: WriteSafetensorsFile output differs from the fixture (%v)", tag, err)
		}
	}
}

func TestSafetensorsRoundTrip(t *testing.T) {
	sp := special()
	tensors := map[string]*Tensor{
		"b.weight":       {Shape: []int{3, 4}, Data: sp},
		"a":              {Shape: []int{}, Data: []float32{7}},
		"empty":          {Shape: []int{0, 5}, Data: []float32{}},
		"Z":              {Shape: []int{2}, Data: []float32{1, 2}},
		"ünï\"\\\n😀\x7f": {Shape: []int{1, 1}, Data: []float32{-3}},
	}
	for _, md := range []map[string]string{nil, {}, {"k": "v", "quote\"": "é\t😀", "": ""}} {
		var buf bytes.Buffer
		if err := WriteSafetensors(&buf, tensors, md); err != nil {
			t.Fatal(err)
		}
		b := buf.Bytes()
		n := binary.LittleEndian.Uint64(b)
		if n%8 != 0 {
			t.Errorf("header length %d is not a multiple of 8", n)
		}
		for _, c := range b[8 : 8+n] {
			if c >= 0x80 {
				t.Errorf("header is not ASCII: %q", b[8:8+n])
				break
			}
		}
		f, err := readST(b, "mem")
		if err != nil {
			t.Fatal(err)
		}
		// Data-offset order; the empty tensor sorts before the one that starts
		// at the same offset.
		wantNames := []string{"Z", "a", "b.weight", "empty", "ünï\"\\\n😀\x7f"}
		if strings.Join(f.Names, "|") != strings.Join(wantNames, "|") {
			t.Errorf("names %q", f.Names)
		}
		for name, want := range tensors {
			requireSameTensor(t, name, f.Tensors[name], want)
		}
		if len(md) == 0 {
			if f.Metadata != nil {
				t.Errorf("metadata %v, want none", f.Metadata)
			}
		} else if len(f.Metadata) != len(md) {
			t.Errorf("metadata %v, want %v", f.Metadata, md)
		} else {
			for k, v := range md {
				if f.Metadata[k] != v {
					t.Errorf("metadata[%q] = %q, want %q", k, f.Metadata[k], v)
				}
			}
		}
	}
}

func TestWriteSafetensorsErrors(t *testing.T) {
	tests := []struct {
		name string
		f    map[string]*Tensor
		md   map[string]string
		want string
	}{
		{"nil tensor", map[string]*Tensor{"a": nil}, nil, `tensor "a": nil tensor`},
		{"bad data", map[string]*Tensor{"a": {Shape: []int{2}, Data: []float32{1}}}, nil, `tensor "a": shape 2 needs 2 values`},
		{"reserved", map[string]*Tensor{"__metadata__": New(1)}, nil, "reserved"},
		{"bad utf8 name", map[string]*Tensor{"a\xff": New(1)}, nil, "UTF-8"},
		{"bad utf8 metadata", map[string]*Tensor{"a": New(1)}, map[string]string{"k": "\xff"}, "UTF-8"},
	}
	for _, tc := range tests {
		err := WriteSafetensors(&bytes.Buffer{}, tc.f, tc.md)
		wantErrContains(t, err, tc.want)
	}
	p := filepath.Join(t.TempDir(), "w.safetensors")
	if err := WriteSafetensorsFile(p, map[string]*Tensor{"a": nil}, nil); err == nil {
		t.Error("WriteSafetensorsFile accepted a nil tensor")
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("failed write left a file: %v", err)
	}
}

func TestPyJSONString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"features.0.conv.weight", `"features.0.conv.weight"`},
		{"a\"b\\c/d", `"a\"b\\c/d"`},
		{"\b\f\n\r\t\x00\x1f\x7f", `"\b\f\n\r\t\u0000\u001f\u007f"`},
		{"é<>&", `"\u00e9<>&"`},
		{"\u2028😀", `"\u2028\ud83d\ude00"`},
	}
	for _, tc := range tests {
		var b bytes.Buffer
		pyJSONString(&b, tc.in)
		if b.String() != tc.want {
			t.Errorf("pyJSONString(%q) = %s, want %s", tc.in, b.String(), tc.want)
		}
	}
}

// refF16 decodes binary16 the slow way, in float64.
func refF16(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	e := int(h>>10) & 0x1f
	m := float64(h & 0x3ff)
	switch e {
	case 0:
		return sign * math.Ldexp(m, -24)
	case 31:
		if m == 0 {
			return math.Inf(int(sign))
		}
		return math.NaN()
	}
	return sign * math.Ldexp(1+m/1024, e-15)
}

func TestF16ToF32(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		got := F16ToF32(uint16(h))
		want := refF16(uint16(h))
		switch {
		case math.IsNaN(want):
			// NaN keeps sign and payload, and stays a NaN.
			wantBits := uint32(h&0x8000)<<16 | 0x7f800000 | uint32(h&0x3ff)<<13
			if math.Float32bits(got) != wantBits || !math.IsNaN(float64(got)) {
				t.Errorf("F16ToF32(%#04x) = %#08x, want NaN %#08x", h, math.Float32bits(got), wantBits)
			}
		case float64(got) != want || math.Signbit(float64(got)) != (h&0x8000 != 0):
			t.Errorf("F16ToF32(%#04x) = %v, want %v", h, got, want)
		}
	}
	named := []struct {
		h    uint16
		want float32
	}{
		{0x3c00, 1}, {0xc000, -2}, {0x7bff, 65504}, {0x0001, 0x1p-24}, {0x03ff, 1023 * 0x1p-24},
		{0x0400, 0x1p-14}, {0x3555, 0.333251953125}, {0x7c00, float32(math.Inf(1))}, {0xfc00, float32(math.Inf(-1))},
	}
	for _, tc := range named {
		if got := F16ToF32(tc.h); got != tc.want {
			t.Errorf("F16ToF32(%#04x) = %v, want %v", tc.h, got, tc.want)
		}
	}
}

func TestBF16ToF32(t *testing.T) {
	tests := []struct {
		b    uint16
		want uint32
	}{
		{0x3f80, math.Float32bits(1)}, {0xc2f7, math.Float32bits(-123.5)}, {0x7f80, 0x7f800000},
		{0xffc1, 0xffc10000}, {0x0001, 0x00010000}, {0x8000, 0x80000000},
	}
	for _, tc := range tests {
		if got := math.Float32bits(BF16ToF32(tc.b)); got != tc.want {
			t.Errorf("BF16ToF32(%#04x) = %#08x, want %#08x", tc.b, got, tc.want)
		}
	}
}

// TestReadSafetensorsDtypes reads hand-built F16, BF16 and F32 tensors and
// the skipped num_batches_tracked counters.
func TestReadSafetensorsDtypes(t *testing.T) {
	var data []byte
	data = append(data, u16LE(0x3c00, 0x0001, 0xfc00, 0x7e00, 0x8000, 0x3555)...) // h: [0,12)
	data = append(data, u16LE(0x3f80, 0xc2f7, 0x0001, 0x7f80)...)                 // b: [12,20)
	data = append(data, f32LE(1.5, -2)...)                                        // f: [20,28)
	data = append(data, binary.LittleEndian.AppendUint64(nil, 7)...)              // bn.num_batches_tracked: [28,36)
	data = append(data, binary.LittleEndian.AppendUint64(nil, 9)...)              // x.num_batches_tracked [1]: [36,44)
	hdr := `{"h":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},` +
		`"b":{"shape":[4],"dtype":"BF16","data_offsets":[12,20]},` +
		`"bn.num_batches_tracked":{"dtype":"I64","shape":[],"data_offsets":[28,36]},` +
		`"x.num_batches_tracked":{"dtype":"I64","shape":[1],"data_offsets":[36,44]},` +
		`"f":{"dtype":"F32","shape":[1,2],"data_offsets":[20,28]}}   `
	f, err := readST(mkST(hdr, data), "dt.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.Names, ","); got != "h,b,f" {
		t.Errorf("names %q, want h,b,f (data-offset order, counters skipped)", got)
	}
	if len(f.Tensors) != 3 || f.Metadata != nil {
		t.Errorf("tensors %v, metadata %v", f.Tensors, f.Metadata)
	}
	requireSameTensor(t, "h", f.Tensors["h"], &Tensor{Shape: []int{2, 3}, Data: []float32{
		1, 0x1p-24, float32(math.Inf(-1)), math.Float32frombits(0x7fc00000), float32(math.Copysign(0, -1)), 0.333251953125}})
	requireSameTensor(t, "b", f.Tensors["b"], &Tensor{Shape: []int{4}, Data: []float32{
		1, -123.5, math.Float32frombits(0x00010000), float32(math.Inf(1))}})
	requireSameTensor(t, "f", f.Tensors["f"], &Tensor{Shape: []int{1, 2}, Data: []float32{1.5, -2}})
}

func TestReadSafetensorsErrors(t *testing.T) {
	one := f32LE(1, 2)
	entry := func(name, dtype, shape, offs string) string {
		return `"` + name + `":{"dtype":"` + dtype + `","shape":` + shape + `,"data_offsets":` + offs + `}`
	}
	hugeLen := binary.LittleEndian.AppendUint64(nil, 200<<20)
	tests := []struct {
		name string
		file []byte
		want []string
	}{
		{"empty", nil, []string{"truncated", "0 bytes"}},
		{"short", []byte{1, 2, 3}, []string{"truncated", "3 bytes"}},
		{"header past end", mkST(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, one)[:30], []string{"truncated", "header length 54 but only 22 bytes follow"}},
		{"header too long", append(hugeLen, make([]byte, 16)...), []string{"header length 209715200 exceeds the 104857600-byte limit"}},
		{"header length max", append(binary.LittleEndian.AppendUint64(nil, math.MaxUint64), 0), []string{"exceeds"}},
		{"tiny header", mkST(" ", nil), []string{"too short"}},
		{"bad JSON", mkST(`{"a":{"dtype":"F32",`, nil), []string{"bad JSON header", "unexpected end of JSON"}},
		{"not an object", mkST(`[1,2,3]`, nil), []string{"bad JSON header", "want an object"}},
		{"trailing JSON", mkST(`{}{}`, nil), []string{"bad JSON header"}},
		{"bad UTF-8", mkST("{\"\xff\":{}}", nil), []string{"UTF-8"}},
		{"duplicate tensor", mkST(`{`+entry("a", "F32", "[1]", "[0,4]")+`,`+entry("a", "F32", "[1]", "[4,8]")+`}`, one), []string{"duplicate key \"a\""}},
		{"entry not object", mkST(`{"a":[1]}`, nil), []string{`tensor "a"`, "want an object"}},
		{"missing dtype", mkST(`{"a":{"shape":[2],"data_offsets":[0,8]}}`, one), []string{`tensor "a"`, `missing field "dtype"`}},
		{"missing shape", mkST(`{"a":{"dtype":"F32","data_offsets":[0,8]}}`, one), []string{`tensor "a"`, `missing field "shape"`}},
		{"missing offsets", mkST(`{"a":{"dtype":"F32","shape":[2]}}`, one), []string{`tensor "a"`, `missing field "data_offsets"`}},
		{"unknown field", mkST(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}`, one), []string{`tensor "a"`, `unexpected field "x"`}},
		{"dtype not string", mkST(`{"a":{"dtype":4,"shape":[2],"data_offsets":[0,8]}}`, one), []string{`tensor "a"`, "dtype is 4"}},
		{"negative dim", mkST(`{`+entry("a", "F32", "[-2]", "[0,8]")+`}`, one), []string{`tensor "a"`, "negative dimension -2"}},
		{"float dim", mkST(`{`+entry("a", "F32", "[2.5]", "[0,8]")+`}`, one), []string{`tensor "a"`, "not an integer"}},
		{"shape not array", mkST(`{`+entry("a", "F32", `"2"`, "[0,8]")+`}`, one), []string{`tensor "a"`, "not an array"}},
		{"huge dim", mkST(`{`+entry("a", "F32", "[99999999999999999999]", "[0,8]")+`}`, one), []string{`tensor "a"`, "overflows"}},
		{"overflowing shape", mkST(`{`+entry("a", "F32", "[4294967296,4294967296]", "[0,8]")+`}`, one), []string{`tensor "a"`, "overflows"}},
		{"three offsets", mkST(`{`+entry("a", "F32", "[2]", "[0,4,8]")+`}`, one), []string{`tensor "a"`, "want [begin, end]"}},
		{"reversed offsets", mkST(`{`+entry("a", "F32", "[0]", "[8,0]")+`}`, one), []string{`tensor "a"`, "begin <= end"}},
		{"negative offset", mkST(`{`+entry("a", "F32", "[0]", "[-4,-4]")+`}`, one), []string{`tensor "a"`, "begin <= end"}},
		{"offsets out of range", mkST(`{`+entry("a", "F32", "[4]", "[0,16]")+`}`, one), []string{`tensor "a"`, "out of range", "data section has 8 bytes"}},
		{"offsets far out of range", mkST(`{`+entry("a", "F32", "[2]", "[8000000000000,8000000000008]")+`}`, one), []string{`tensor "a"`, "out of range"}},
		{"size mismatch", mkST(`{`+entry("a", "F32", "[3]", "[0,8]")+`}`, one), []string{`tensor "a"`, "span 8 bytes", "F32 3 needs 12"}},
		{"f16 size mismatch", mkST(`{`+entry("a", "F16", "[2]", "[0,8]")+`}`, one), []string{`tensor "a"`, "needs 4"}},
		{"overlap", mkST(`{`+entry("a", "F32", "[2]", "[0,8]")+`,`+entry("b", "F32", "[1]", "[4,8]")+`}`, one), []string{`tensor "b"`, `overlap tensor "a"`}},
		{"same range", mkST(`{`+entry("a", "F32", "[2]", "[0,8]")+`,`+entry("b", "F32", "[2]", "[0,8]")+`}`, one), []string{`tensor "b"`, `overlap tensor "a"`}},
		{"gap", mkST(`{`+entry("a", "F32", "[1]", "[4,8]")+`}`, one), []string{`tensor "a"`, "gap of 4 unused bytes"}},
		{"trailing data", mkST(`{`+entry("a", "F32", "[1]", "[0,4]")+`}`, one), []string{"4 bytes of trailing data"}},
		{"F64", mkST(`{`+entry("w", "F64", "[1]", "[0,8]")+`}`, one), []string{`tensor "w"`, "dtype F64 not supported; want F32, F16 or BF16"}},
		{"I64", mkST(`{`+entry("w", "I64", "[1]", "[0,8]")+`}`, one), []string{`tensor "w"`, "dtype I64 not supported"}},
		{"I64 counter with 2 elements", mkST(`{`+entry("bn.num_batches_tracked", "I64", "[2]", "[0,16]")+`}`, append(one, one...)), []string{`tensor "bn.num_batches_tracked"`, "dtype I64 not supported"}},
		{"I32 counter", mkST(`{`+entry("bn.num_batches_tracked", "I32", "[]", "[0,4]")+`}`, one[:4]), []string{"dtype I32 not supported"}},
		{"unknown dtype", mkST(`{`+entry("w", "F33", "[1]", "[0,4]")+`}`, one[:4]), []string{`tensor "w"`, `unknown dtype "F33"`}},
		{"metadata not object", mkST(`{"__metadata__":"x"}`, nil), []string{"__metadata__", "want an object"}},
		{"metadata not string", mkST(`{"__metadata__":{"k":1}}`, nil), []string{`__metadata__["k"] is 1; want a string`}},
		{"metadata duplicate", mkST(`{"__metadata__":{"k":"a","k":"b"}}`, nil), []string{`duplicate key "k"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readST(tc.file, "bad.safetensors")
			wantErrContains(t, err, append([]string{"bad.safetensors"}, tc.want...)...)
		})
	}

	// A reader that is shorter than the size it claims.
	b := mkST(`{`+entry("a", "F32", "[2]", "[0,8]")+`}`, one)
	_, err := ReadSafetensors(bytes.NewReader(b[:len(b)-1]), int64(len(b)), "short.safetensors")
	wantErrContains(t, err, "short.safetensors", "truncated")
	_, err = ReadSafetensorsFile(filepath.Join(t.TempDir(), "missing.safetensors"))
	wantErrContains(t, err, "missing.safetensors")
}

func FuzzReadSafetensors(f *testing.F) {
	var buf bytes.Buffer
	err := WriteSafetensors(&buf, map[string]*Tensor{
		"a.weight": {Shape: []int{2, 2}, Data: []float32{1, 2, 3, 4}},
		"b":        {Shape: []int{}, Data: []float32{5}},
	}, map[string]string{"k": "v"})
	if err != nil {
		f.Fatal(err)
	}
	good := buf.Bytes()
	f.Add(good)
	f.Add(good[:len(good)-2])
	f.Add(good[:20])
	f.Add(mkST(`{"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"x.num_batches_tracked":{"dtype":"I64","shape":[],"data_offsets":[4,12]}}`, make([]byte, 12)))
	f.Add(mkST(`{"b":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}}`, make([]byte, 2)))
	f.Add(mkST(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}`, make([]byte, 6)))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := readST(b, "fuzz.safetensors")
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz.safetensors") {
				t.Errorf("error does not name the file: %v", err)
			}
			return
		}
		if len(got.Names) != len(got.Tensors) {
			t.Fatalf("%d names, %d tensors", len(got.Names), len(got.Tensors))
		}
		for _, name := range got.Names {
			tt := got.Tensors[name]
			if n, err := NumelOf(tt.Shape); err != nil || n != len(tt.Data) {
				t.Fatalf("%q: shape %v with %d values", name, tt.Shape, len(tt.Data))
			}
		}
		var out bytes.Buffer
		if err := WriteSafetensors(&out, got.Tensors, got.Metadata); err != nil {
			t.Fatal(err)
		}
		again, err := readST(out.Bytes(), "again")
		if err != nil {
			t.Fatal(err)
		}
		if len(again.Tensors) != len(got.Tensors) || len(again.Metadata) != len(got.Metadata) {
			t.Fatalf("round trip changed the contents")
		}
		for name, tt := range got.Tensors {
			requireSameTensor(t, name, again.Tensors[name], tt)
		}
		for k, v := range got.Metadata {
			if again.Metadata[k] != v {
				t.Fatalf("metadata %q: %q, want %q", k, again.Metadata[k], v)
			}
		}
	})
}
