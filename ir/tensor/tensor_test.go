package tensor

import (
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNewAndFromData(t *testing.T) {
	s := New()
	if len(s.Shape) != 0 || len(s.Data) != 1 || s.Numel() != 1 {
		t.Errorf("New() = %+v, want a scalar", s)
	}
	shape := []int{2, 3, 4}
	x := New(shape...)
	shape[0] = 9
	if x.Numel() != 24 || len(x.Data) != 24 || x.Shape[0] != 2 {
		t.Errorf("New(2,3,4) = shape %v, %d values", x.Shape, len(x.Data))
	}
	if New(5, 0, 3).Numel() != 0 {
		t.Error("New(5,0,3) is not empty")
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("New(-1) did not panic")
			}
		}()
		New(-1)
	}()

	data := []float32{1, 2, 3, 4, 5, 6}
	f, err := FromData([]int{2, 3}, data)
	if err != nil || f.Numel() != 6 || &f.Data[0] != &data[0] {
		t.Errorf("FromData = %v, %v", f, err)
	}
	tests := []struct {
		shape []int
		n     int
		want  string
	}{
		{[]int{2, 3}, 5, "shape 2x3 needs 6 values, got 5"},
		{[]int{2, -3}, 0, "negative dimension -3"},
		{[]int{math.MaxInt, 2}, 0, "too many elements"},
		{nil, 0, "shape scalar needs 1 values, got 0"},
	}
	for _, tc := range tests {
		_, err := FromData(tc.shape, make([]float32, tc.n))
		wantErrContains(t, err, tc.want)
	}
	if n, err := NumelOf([]int{math.MaxInt, math.MaxInt, 0}); n != 0 || err != nil {
		t.Errorf("NumelOf with a zero dimension = %d, %v; want 0", n, err)
	}
}

func TestShapeString(t *testing.T) {
	tests := []struct {
		shape []int
		want  string
	}{
		{nil, "scalar"},
		{[]int{}, "scalar"},
		{[]int{1000}, "1000"},
		{[]int{32, 3, 3, 3}, "32x3x3x3"},
		{[]int{2, 0}, "2x0"},
	}
	for _, tc := range tests {
		if got := ShapeString(tc.shape); got != tc.want {
			t.Errorf("ShapeString(%v) = %q, want %q", tc.shape, got, tc.want)
		}
	}
}

func TestParseShape(t *testing.T) {
	good := []struct {
		s    string
		want []int
	}{
		{"3x299x299", []int{3, 299, 299}},
		{"1000", []int{1000}},
		{"32x3x3x3", []int{32, 3, 3, 3}},
		{"007x1", []int{7, 1}},
	}
	for _, tc := range good {
		got, err := ParseShape(tc.s)
		if err != nil || !shapeEqual(got, tc.want) {
			t.Errorf("ParseShape(%q) = %v, %v; want %v", tc.s, got, err, tc.want)
		}
		if err == nil && tc.s[0] != '0' && ShapeString(got) != tc.s {
			t.Errorf("ShapeString(ParseShape(%q)) = %q", tc.s, ShapeString(got))
		}
	}
	bad := []struct{ s, want string }{
		{"", "empty shape"},
		{"3x", "empty dimension 1"},
		{"x3", "empty dimension 0"},
		{"3xx3", "empty dimension 1"},
		{"3x-1", `dimension "-1" is not a positive integer`},
		{"+3", "not a positive integer"},
		{"3 x 4", "not a positive integer"},
		{"3X4", "not a positive integer"},
		{"3x0", "dimension 1 is zero"},
		{"scalar", "not a positive integer"},
		{"1.5", "not a positive integer"},
		{"99999999999999999999", "too large"},
		{"4294967296x4294967296", "too many elements"},
	}
	for _, tc := range bad {
		got, err := ParseShape(tc.s)
		if err == nil {
			t.Errorf("ParseShape(%q) = %v, want an error", tc.s, got)
			continue
		}
		wantErrContains(t, err, tc.want)
	}
}

func TestMaxAbs(t *testing.T) {
	nan := float32(math.NaN())
	inf := float32(math.Inf(1))
	tests := []struct {
		a, b     []float32
		maxAbsA  float64
		wantDiff float64 // NaN means NaN
	}{
		{[]float32{}, []float32{}, 0, 0},
		{[]float32{1, -3, 2}, []float32{1, -3, 2}, 3, 0},
		{[]float32{1, -3, 2}, []float32{1.5, -1, 2}, 3, 2},
		{[]float32{math.MaxFloat32}, []float32{-math.MaxFloat32}, math.MaxFloat32, 2 * math.MaxFloat32},
		{[]float32{1, nan}, []float32{1, 0}, math.NaN(), math.NaN()},
		{[]float32{0, 1}, []float32{nan, 1}, 1, math.NaN()},
		{[]float32{inf}, []float32{inf}, math.Inf(1), math.NaN()},
		{[]float32{-inf}, []float32{0}, math.Inf(1), math.Inf(1)},
	}
	same := func(a, b float64) bool { return a == b || (math.IsNaN(a) && math.IsNaN(b)) }
	for i, tc := range tests {
		a := &Tensor{Shape: []int{len(tc.a)}, Data: tc.a}
		b := &Tensor{Shape: []int{len(tc.b)}, Data: tc.b}
		if got := MaxAbs(a); !same(got, tc.maxAbsA) {
			t.Errorf("%d: MaxAbs = %v, want %v", i, got, tc.maxAbsA)
		}
		got, err := MaxAbsDiff(a, b)
		if err != nil || !same(got, tc.wantDiff) {
			t.Errorf("%d: MaxAbsDiff = %v, %v; want %v", i, got, err, tc.wantDiff)
		}
	}
	_, err := MaxAbsDiff(New(2, 3), New(3, 2))
	wantErrContains(t, err, "shape mismatch: 2x3 vs 3x2")
	_, err = MaxAbsDiff(New(6), New(2, 3))
	wantErrContains(t, err, "shape mismatch: 6 vs 2x3")
}

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "out.bin")

	// Failure in the callback, after writing part of the output: no file,
	// no temporary file.
	boom := errors.New("boom")
	err := WriteFileAtomic(p, func(w io.Writer) error {
		if _, err := w.Write([]byte(strings.Repeat("partial", 1<<20))); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), p) {
		t.Errorf("err = %v, want boom naming the file", err)
	}
	if names := dirEntries(t, dir); len(names) != 0 {
		t.Errorf("failed write left %v", names)
	}

	// A panic in the callback also cleans up.
	func() {
		defer func() { recover() }()
		WriteFileAtomic(p, func(w io.Writer) error { w.Write([]byte("x")); panic("oops") })
	}()
	if names := dirEntries(t, dir); len(names) != 0 {
		t.Errorf("panicking write left %v", names)
	}

	// Success.
	if err := WriteFileAtomic(p, func(w io.Writer) error { _, err := io.WriteString(w, "hello"); return err }); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != "hello" {
		t.Errorf("content %q, %v", b, err)
	}
	if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, %v; want 0644", st.Mode(), err)
	}

	// A failed replacement keeps the old file intact; a successful one
	// replaces it and keeps its permissions.
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(p, func(w io.Writer) error { io.WriteString(w, "new"); return boom }); err == nil {
		t.Error("no error")
	}
	if b, _ := os.ReadFile(p); string(b) != "hello" {
		t.Errorf("failed replacement changed the file to %q", b)
	}
	if err := WriteFileAtomic(p, func(w io.Writer) error { _, err := io.WriteString(w, "new"); return err }); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "new" {
		t.Errorf("content %q, want new", b)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600 kept", st.Mode())
	}
	if names := dirEntries(t, dir); len(names) != 1 {
		t.Errorf("directory holds %v, want only out.bin", names)
	}

	// Unwritable destinations are errors that name the file.
	err = WriteFileAtomic(filepath.Join(dir, "no", "such", "dir", "f"), func(io.Writer) error { return nil })
	wantErrContains(t, err, "no/such/dir/f")
	err = WriteFileAtomic(dir, func(io.Writer) error { return nil })
	wantErrContains(t, err, "not a regular file")
}
