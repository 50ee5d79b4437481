// Package tensor holds Kiln's dense float32 tensor type and the file formats
// and reference data built on it:
//
//   - [Tensor], a row-major (C order) float32 array with a static shape;
//   - NumPy .npy reading and writing ([ReadNPY], [WriteNPY]);
//   - safetensors reading and writing ([ReadSafetensors], [WriteSafetensors]);
//   - the procedural weight generator of the reference fixtures ([Generate]);
//   - checking a loaded weight set against the expected names and shapes
//     ([CheckWeights]);
//   - crash-safe file output ([WriteFileAtomic]).
//
// The package uses only the standard library. No reader panics on malformed
// input; every error names the file (and, where it applies, the tensor) and
// the cause.
package tensor

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Tensor is a dense float32 tensor stored in row-major (C) order: the last
// dimension varies fastest. A scalar has an empty Shape and one element.
// Invariant (checked by [FromData] and by every reader, assumed elsewhere):
// len(Data) equals the product of Shape.
type Tensor struct {
	// Shape holds the dimensions, outermost first; empty for a scalar.
	Shape []int
	// Data holds the elements in row-major order.
	Data []float32
}

// New returns a zero-filled tensor of the given shape. New() is a scalar.
// The shape slice is copied. New panics if a dimension is negative or the
// element count overflows int; use [FromData] or [NumelOf] for untrusted
// shapes.
func New(shape ...int) *Tensor {
	n, err := NumelOf(shape)
	if err != nil {
		panic("tensor.New: " + err.Error())
	}
	return &Tensor{Shape: append([]int{}, shape...), Data: make([]float32, n)}
}

// FromData returns a tensor with the given shape that uses data as its
// storage (data is not copied; the shape is). It returns an error if a
// dimension is negative, the element count overflows, or len(data) differs
// from the element count.
func FromData(shape []int, data []float32) (*Tensor, error) {
	n, err := NumelOf(shape)
	if err != nil {
		return nil, err
	}
	if len(data) != n {
		return nil, fmt.Errorf("tensor: shape %s needs %d values, got %d", ShapeString(shape), n, len(data))
	}
	return &Tensor{Shape: append([]int{}, shape...), Data: data}, nil
}

// Numel returns the number of elements: the product of the shape (1 for a
// scalar).
func (t *Tensor) Numel() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// NumelOf returns the product of shape (1 for a scalar), or an error if a
// dimension is negative or the product overflows int.
func NumelOf(shape []int) (int, error) {
	zero := false
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("tensor: negative dimension %d in shape %s", d, ShapeString(shape))
		}
		zero = zero || d == 0
	}
	if zero {
		return 0, nil
	}
	n := 1
	for _, d := range shape {
		if n > math.MaxInt/d {
			return 0, fmt.Errorf("tensor: shape %s has too many elements", ShapeString(shape))
		}
		n *= d
	}
	return n, nil
}

// ShapeString formats a shape as its dimensions joined by "x", for example
// "32x3x3x3". An empty shape (a scalar) prints as "scalar".
func ShapeString(shape []int) string {
	if len(shape) == 0 {
		return "scalar"
	}
	var b strings.Builder
	for i, d := range shape {
		if i > 0 {
			b.WriteByte('x')
		}
		b.WriteString(strconv.Itoa(d))
	}
	return b.String()
}

// ParseShape parses a shape written as positive decimal integers joined by
// "x", such as "3x299x299" or "1000". Signs, spaces, empty components, zero
// dimensions and shapes whose element count overflows int are rejected.
func ParseShape(s string) ([]int, error) {
	if s == "" {
		return nil, errors.New(`tensor: empty shape; want positive integers joined by "x", e.g. 3x299x299`)
	}
	parts := strings.Split(s, "x")
	shape := make([]int, len(parts))
	n := 1
	for i, p := range parts {
		if p == "" {
			return nil, fmt.Errorf(`tensor: shape %q: empty dimension %d; want positive integers joined by "x", e.g. 3x299x299`, s, i)
		}
		for _, c := range p {
			if c < '0' || c > '9' {
				return nil, fmt.Errorf(`tensor: shape %q: dimension %q is not a positive integer; want e.g. 3x299x299`, s, p)
			}
		}
		d, err := strconv.Atoi(p)
		if err != nil {
			return nil, fmt.Errorf("tensor: shape %q: dimension %q is too large", s, p)
		}
		if d == 0 {
			return nil, fmt.Errorf("tensor: shape %q: dimension %d is zero; dimensions must be positive", s, i)
		}
		if n > math.MaxInt/d {
			return nil, fmt.Errorf("tensor: shape %q has too many elements", s)
		}
		n *= d
		shape[i] = d
	}
	return shape, nil
}

// MaxAbs returns max |x| over the elements of t as a float64 (0 for an empty
// tensor). It returns NaN if any element is NaN, so that a tolerance check
// such as MaxAbs(t) <= tol fails.
func MaxAbs(t *Tensor) float64 {
	m := 0.0
	for _, v := range t.Data {
		a := math.Abs(float64(v))
		if a != a {
			return math.NaN()
		}
		if a > m {
			m = a
		}
	}
	return m
}

// MaxAbsDiff returns max |a_i - b_i|, computed in float64 (so it is exact for
// finite float32 inputs and never overflows). Shapes must be equal, otherwise
// it returns an error. The result is NaN if any difference is NaN (a NaN on
// either side, or infinities of the same sign), so that a tolerance check
// such as d <= tol fails.
func MaxAbsDiff(a, b *Tensor) (float64, error) {
	if !shapeEqual(a.Shape, b.Shape) {
		return 0, fmt.Errorf("tensor: shape mismatch: %s vs %s", ShapeString(a.Shape), ShapeString(b.Shape))
	}
	if len(a.Data) != len(b.Data) {
		return 0, fmt.Errorf("tensor: data length mismatch: %d vs %d values", len(a.Data), len(b.Data))
	}
	m := 0.0
	for i, v := range a.Data {
		d := math.Abs(float64(v) - float64(b.Data[i]))
		if d != d {
			return math.NaN(), nil
		}
		if d > m {
			m = d
		}
	}
	return m, nil
}

func shapeEqual(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// WriteFileAtomic creates or replaces the file at path with the bytes that
// write produces, so that readers see either the old file or the complete new
// one, never a partial file. It writes through a buffer to a temporary file in
// the same directory, flushes it, fsyncs it, gives it the permissions of the
// file it replaces (0644 for a new file), renames it over path and then
// fsyncs the directory (best effort). If write returns an error, panics, or
// any step fails, the temporary file is removed and path is left untouched.
func WriteFileAtomic(path string, write func(io.Writer) error) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	mode := fs.FileMode(0o644)
	if st, statErr := os.Stat(path); statErr == nil {
		if !st.Mode().IsRegular() {
			return fmt.Errorf("write %s: not a regular file", path)
		}
		mode = st.Mode().Perm()
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	done := false
	defer func() {
		if !done {
			f.Close()
			os.Remove(tmp)
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := write(bw); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: fsync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	done = true
	if d, derr := os.Open(dir); derr == nil {
		d.Sync() // best effort: makes the rename durable on most file systems
		d.Close()
	}
	return nil
}
