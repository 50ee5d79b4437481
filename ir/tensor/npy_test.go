package tensor

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// mkNPY assembles a .npy file from a version, a raw header and raw data.
func mkNPY(major byte, header string, data []byte) []byte {
	b := []byte("\x93NUMPY")
	b = append(b, major, 0)
	if major == 1 {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(header)))
	} else {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(header)))
	}
	b = append(b, header...)
	return append(b, data...)
}

func f32LE(vs ...float32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

func f64LE(vs ...float64) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
	}
	return b
}

func special() []float32 {
	return []float32{0, float32(math.Copysign(0, -1)), 1, -1.5, math.MaxFloat32, math.SmallestNonzeroFloat32,
		float32(math.Inf(1)), float32(math.Inf(-1)), math.Float32frombits(0x7fc00001), math.Float32frombits(0xffbfffff),
		1e-40, 3.1415927}
}

func TestNPYRoundTrip(t *testing.T) {
	sp := special()
	tests := []struct {
		shape []int
		data  []float32
	}{
		{nil, []float32{42}},
		{[]int{0}, []float32{}},
		{[]int{3}, []float32{1, 2, 3}},
		{[]int{3, 4}, sp},
		{[]int{2, 3, 2}, sp},
		{[]int{1, 1, 2, 6}, sp},
		{[]int{4, 0, 7}, []float32{}},
		{[]int{1234567, 0}, []float32{}},
		{[]int{12, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, sp},
	}
	for _, tc := range tests {
		in, err := FromData(tc.shape, tc.data)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := WriteNPY(&buf, in); err != nil {
			t.Fatal(err)
		}
		b := buf.Bytes()
		hlen := int(binary.LittleEndian.Uint16(b[8:10]))
		if b[6] != 1 || b[7] != 0 || (10+hlen)%64 != 0 || b[10+hlen-1] != '\n' || len(b) != 10+hlen+4*len(tc.data) {
			t.Errorf("%s: bad layout: version %d.%d, header length %d, total %d", ShapeString(tc.shape), b[6], b[7], hlen, len(b))
		}
		if h := string(b[10 : 10+hlen]); !strings.HasPrefix(h, "{'descr': '<f4', 'fortran_order': False, 'shape': "+shapeRepr(tc.shape)+", }") ||
			strings.TrimRight(h[:len(h)-1], " ") != h[:strings.IndexByte(h, '}')+1] {
			t.Errorf("%s: header %q", ShapeString(tc.shape), h)
		}
		out, err := ReadNPY(bytes.NewReader(b), "mem")
		if err != nil {
			t.Fatalf("%s: %v", ShapeString(tc.shape), err)
		}
		requireSameTensor(t, ShapeString(tc.shape), out, in)
	}
}

func TestNPYFileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.npy")
	in, _ := FromData([]int{2, 6}, special())
	if err := WriteNPYFile(p, in); err != nil {
		t.Fatal(err)
	}
	out, err := ReadNPYFile(p)
	if err != nil {
		t.Fatal(err)
	}
	requireSameTensor(t, p, out, in)
	_, err = ReadNPYFile(filepath.Join(dir, "missing.npy"))
	wantErrContains(t, err, "missing.npy")
	if err := WriteNPY(&bytes.Buffer{}, &Tensor{Shape: []int{2, 2}, Data: make([]float32, 3)}); err == nil {
		t.Error("WriteNPY accepted a tensor whose data does not match its shape")
	}
	if err := WriteNPYFile(filepath.Join(dir, "bad.npy"), nil); err == nil {
		t.Error("WriteNPYFile accepted a nil tensor")
	}
	if _, err := os.Stat(filepath.Join(dir, "bad.npy")); !os.IsNotExist(err) {
		t.Errorf("failed WriteNPYFile left a file: %v", err)
	}
}

// TestNPYFixtures reads every .npy file listed in manifest.json, checks its
// recorded shape, and checks that writing a float32 file back reproduces it
// byte for byte (WriteNPY lays out headers as numpy 1.24 does).
func TestNPYFixtures(t *testing.T) {
	dir := fixtureDir(t)
	var m struct {
		Files []struct {
			Path  string `json:"path"`
			Bytes int    `json:"bytes"`
			Shape []int  `json:"shape"`
			Dtype string `json:"dtype"`
		} `json:"files"`
	}
	loadJSON(t, filepath.Join(dir, "manifest.json"), &m)
	n := 0
	for _, f := range m.Files {
		if !strings.HasSuffix(f.Path, ".npy") {
			continue
		}
		n++
		p := filepath.Join(dir, f.Path)
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Error(err)
			continue
		}
		got, err := ReadNPYFile(p)
		if err != nil {
			t.Error(err)
			continue
		}
		if !shapeEqual(got.Shape, f.Shape) {
			t.Errorf("%s: shape %s, manifest says %s", f.Path, ShapeString(got.Shape), ShapeString(f.Shape))
		}
		for i, v := range got.Data {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				t.Errorf("%s: non-finite value at %d", f.Path, i)
				break
			}
		}
		switch f.Dtype {
		case "float32":
			var buf bytes.Buffer
			if err := WriteNPY(&buf, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), raw) {
				t.Errorf("%s: WriteNPY(ReadNPY(file)) differs from the file", f.Path)
			}
		case "float64":
			// Compare with the float32 logits next to it: they agree to about
			// 1.4e-6 of max|ref| (README section 5).
			ref, err := ReadNPYFile(filepath.Join(filepath.Dir(p), "logits.npy"))
			if err != nil {
				t.Fatal(err)
			}
			d, err := MaxAbsDiff(got, ref)
			if err != nil || d > 1e-5*MaxAbs(ref) {
				t.Errorf("%s: max|f64 - f32 logits| = %g (max|ref| %g), %v", f.Path, d, MaxAbs(ref), err)
			}
		default:
			t.Errorf("%s: unexpected dtype %q", f.Path, f.Dtype)
		}
	}
	if n != 51 {
		t.Errorf("manifest lists %d .npy files, want 51", n)
	}
}

func TestReadNPYVariants(t *testing.T) {
	tests := []struct {
		name  string
		file  []byte
		shape []int
		data  []float32
	}{
		{"v2.0", mkNPY(2, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n", f32LE(1, 2)), []int{2}, []float32{1, 2}},
		{"f8", mkNPY(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }\n", f64LE(0.1, -1e300, math.Inf(-1))),
			[]int{3}, []float32{0.1, float32(math.Inf(-1)), float32(math.Inf(-1))}},
		{"key order, double quotes, no trailing comma", mkNPY(1, `{"shape": (1, 2), "fortran_order": False, "descr": "<f4"}`, f32LE(5, 6)), []int{1, 2}, []float32{5, 6}},
		{"python2 long", mkNPY(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 1L), }", f32LE(5, 6)), []int{2, 1}, []float32{5, 6}},
		{"scalar", mkNPY(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", f32LE(7)), nil, []float32{7}},
		{"empty", mkNPY(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 999999999), }", nil), []int{0, 999999999}, []float32{}},
		{"whitespace", mkNPY(1, "\t{ 'descr' : '<f4' ,\n'fortran_order':False,'shape':( 1 , ) , }\r\n  ", f32LE(8)), []int{1}, []float32{8}},
	}
	for _, tc := range tests {
		got, err := ReadNPY(bytes.NewReader(tc.file), tc.name)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		requireSameTensor(t, tc.name, got, &Tensor{Shape: tc.shape, Data: tc.data})
	}
}

func TestReadNPYErrors(t *testing.T) {
	good := mkNPY(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n", f32LE(1, 2, 3, 4, 5, 6))
	hdr := func(h string) []byte { return mkNPY(1, h, f32LE(1, 2, 3, 4, 5, 6)) }
	tests := []struct {
		name string
		file []byte
		want []string
	}{
		{"empty", nil, []string{"truncated header"}},
		{"magic prefix only", good[:4], []string{"truncated header", "4 bytes"}},
		{"bad magic", append([]byte("PK\x03\x04"), good[4:]...), []string{"bad magic"}},
		{"text", []byte("hello, world"), []string{"bad magic"}},
		{"no version", good[:7], []string{"truncated header"}},
		{"no header length", good[:9], []string{"truncated header"}},
		{"version 3.0", append(append([]byte{}, good[:6]...), append([]byte{3, 0}, good[8:]...)...), []string{"unsupported format version 3.0"}},
		{"version 1.1", append(append([]byte{}, good[:6]...), append([]byte{1, 1}, good[8:]...)...), []string{"unsupported format version 1.1"}},
		{"truncated header", good[:30], []string{"truncated header", "header length"}},
		{"truncated v2 header", mkNPY(2, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", nil)[:40], []string{"truncated header"}},
		{"truncated data", good[:len(good)-5], []string{"truncated data", "needs 24 bytes, got 19"}},
		{"no data", good[:len(good)-24], []string{"truncated data", "needs 24 bytes, got 0"}},
		{"trailing garbage", append(append([]byte{}, good...), "junk"...), []string{"trailing garbage", "4 bytes"}},
		{"i8", hdr("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3), }"), []string{"dtype '<i8' not supported; want '<f4'"}},
		{"big-endian f4", hdr("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }"), []string{"dtype '>f4' not supported"}},
		{"f2", hdr("{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }"), []string{"dtype '<f2' not supported"}},
		{"structured", hdr("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2, 3), }"), []string{"dtype [('a', '<f4')] not supported"}},
		{"fortran", hdr("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }"), []string{"fortran_order True not supported"}},
		{"fortran not bool", hdr("{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 3), }"), []string{"malformed header", "fortran_order"}},
		{"negative dim", hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 3), }"), []string{"malformed header", "negative dimension"}},
		{"huge dim", hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999, 3), }"), []string{"overflows"}},
		{"overflowing shape", hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4), }"), []string{"shape (4294967296, 4294967296, 4) overflows"}},
		{"overflowing bytes", hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904,), }"), []string{"overflows"}},
		{"hostile shape", hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }"), []string{"truncated data", "needs 4000000000000 bytes, got 24"}},
		{"shape list", hdr("{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3], }"), []string{"malformed header", "tuple"}},
		{"shape int", hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (6), }"), []string{"malformed header", "tuple"}},
		{"float dim", hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2.0, 3), }"), []string{"malformed header", "not an integer"}},
		{"missing key", hdr("{'descr': '<f4', 'shape': (2, 3), }"), []string{"malformed header", `missing key "fortran_order"`}},
		{"extra key", hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}"), []string{"malformed header", `unexpected key "x"`}},
		{"duplicate key", hdr("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"), []string{"malformed header", "duplicate key"}},
		{"not a dict", hdr("('descr', '<f4')"), []string{"malformed header", "not a dict"}},
		{"unclosed dict", hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), "), []string{"malformed header", "unexpected end"}},
		{"unclosed string", hdr("{'descr: '<f4'"), []string{"malformed header"}},
		{"junk after dict", hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } x"), []string{"malformed header", "after the header dict"}},
		{"missing comma", hdr("{'descr': '<f4' 'fortran_order': False, 'shape': (2, 3), }"), []string{"malformed header"}},
		{"non-ascii", hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\xff"), []string{"malformed header", "0xff"}},
		{"deep nesting", hdr("{'descr': " + strings.Repeat("(", 1000) + "}"), []string{"malformed header", "nesting too deep"}},
		{"unknown name", hdr("{'descr': '<f4', 'fortran_order': false, 'shape': (2, 3), }"), []string{"malformed header", `unknown name "false"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadNPY(bytes.NewReader(tc.file), "bad.npy")
			wantErrContains(t, err, append([]string{"bad.npy"}, tc.want...)...)
		})
	}
}

func FuzzReadNPY(f *testing.F) {
	var buf bytes.Buffer
	in, _ := FromData([]int{2, 3}, []float32{1, -2, 3.5, 0, float32(math.Inf(1)), 1e-42})
	if err := WriteNPY(&buf, in); err != nil {
		f.Fatal(err)
	}
	good := buf.Bytes()
	f.Add(good)
	f.Add(good[:20])
	f.Add(good[:len(good)-3])
	f.Add(append(append([]byte{}, good...), 0))
	f.Add(mkNPY(2, "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", f64LE(2.5)))
	f.Add(mkNPY(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (), }", f32LE(1)))
	f.Add(mkNPY(1, "{'descr': '<i8', 'fortran_order': False, 'shape': (-1, 99999999999999999999L), }", nil))
	f.Add([]byte("\x93NUMPY\x01\x00\xff\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := ReadNPY(bytes.NewReader(b), "fuzz.npy")
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz.npy") {
				t.Errorf("error does not name the file: %v", err)
			}
			return
		}
		if n, err := NumelOf(got.Shape); err != nil || n != len(got.Data) {
			t.Fatalf("shape %v with %d values", got.Shape, len(got.Data))
		}
		var out bytes.Buffer
		if err := WriteNPY(&out, got); err != nil {
			t.Fatal(err)
		}
		again, err := ReadNPY(&out, "again")
		if err != nil {
			t.Fatal(err)
		}
		requireSameTensor(t, "round trip", again, got)
	})
}
