package tensor

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Spec is an expected tensor: its name and shape.
type Spec struct {
	// Name is the tensor's key, e.g. "features.0.conv.weight".
	Name string
	// Shape is the expected shape.
	Shape []int
	// NonNegative requires every value to be >= 0, as a BatchNorm running
	// variance must be: sqrt(var + eps) of a negative variance is NaN, which
	// would silently turn every output NaN. Callers set it from the graph
	// (cmd/kiln: a param used as a "running_var" operand).
	NonNegative bool
}

// WeightsError reports every problem [CheckWeights] found in one weight set.
type WeightsError struct {
	// File names the weight set (normally its path).
	File string
	// Problems holds one line per problem, grouped in the order missing,
	// unexpected, mis-shaped, invalid data, non-finite, negative, and
	// sorted by tensor name within each group.
	Problems []string
	// Hint, if set, is printed before the problems: what probably caused
	// them and how to fix it (kiln sets it from PrefixHint).
	Hint string
}

// Error formats the problems as one line per problem under a summary line.
func (e *WeightsError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "weights %s: %d problem", e.File, len(e.Problems))
	if len(e.Problems) != 1 {
		b.WriteByte('s')
	}
	b.WriteByte(':')
	if e.Hint != "" {
		b.WriteString("\n\thint: ")
		b.WriteString(e.Hint)
	}
	for _, p := range e.Problems {
		b.WriteString("\n\t")
		b.WriteString(p)
	}
	return b.String()
}

// CheckWeights compares a loaded weight set got against the expected tensors
// want and reports, in one [*WeightsError], every problem at once:
//
//   - missing: a wanted name absent from got (with the wanted shape);
//   - unexpected: a name in got that is not wanted (names ending in
//     "num_batches_tracked" are ignored);
//   - mis-shaped: shapes differ (both printed like 32x3x3x3);
//   - invalid: a nil tensor, or data whose length does not match its shape;
//   - non-finite: the tensor holds NaN or ±Inf (the first bad flat index,
//     with its multi-index, and its value);
//   - negative: a tensor whose Spec is NonNegative (a BatchNorm running
//     variance) holds a value < 0 (the first such index and value).
//
// A name listed twice in want is also reported. The output is deterministic.
// CheckWeights returns nil if there is nothing to report. file is used in the
// message only.
func CheckWeights(file string, want []Spec, got map[string]*Tensor) error {
	return CheckWeightsUnread(file, want, got, nil)
}

// CheckWeightsUnread is [CheckWeights] for a weight set read with
// [ReadSafetensorsSelect]: unread lists the tensors whose data was not read
// (by their header only). Each counts as present with its declared shape,
// so an unread tensor is reported as unexpected (with its dtype and byte
// size) or mis-shaped exactly as a read one would be, and is not missing;
// its values are not checked.
func CheckWeightsUnread(file string, want []Spec, got map[string]*Tensor, unread []SafetensorsHeader) error {
	headers := make(map[string]SafetensorsHeader, len(unread))
	for _, h := range unread {
		headers[h.Name] = h
	}
	var missing, unexpected, shapes, invalid, nonFinite, negative, dups []string
	wanted := make(map[string]bool, len(want))
	nonNeg := map[string]bool{}
	for _, s := range want {
		if wanted[s.Name] {
			dups = append(dups, fmt.Sprintf("tensor %q listed more than once in the expected set", s.Name))
			continue
		}
		wanted[s.Name] = true
		if s.NonNegative {
			nonNeg[s.Name] = true
		}
		t, ok := got[s.Name]
		if h, unreadOK := headers[s.Name]; !ok && unreadOK {
			if !shapeEqual(h.Shape, s.Shape) {
				shapes = append(shapes, fmt.Sprintf("tensor %q has shape %s, want %s (not read)", s.Name, ShapeString(h.Shape), ShapeString(s.Shape)))
			}
			continue
		}
		if !ok {
			missing = append(missing, fmt.Sprintf("missing tensor %q (want %s)", s.Name, ShapeString(s.Shape)))
			continue
		}
		if t != nil && !shapeEqual(t.Shape, s.Shape) {
			shapes = append(shapes, fmt.Sprintf("tensor %q has shape %s, want %s", s.Name, ShapeString(t.Shape), ShapeString(s.Shape)))
		}
	}
	for name, t := range got {
		if !wanted[name] && !strings.HasSuffix(name, "num_batches_tracked") {
			desc := "nil"
			if t != nil {
				desc = ShapeString(t.Shape)
			}
			unexpected = append(unexpected, fmt.Sprintf("unexpected tensor %q (%s)", name, desc))
		}
		if t == nil {
			invalid = append(invalid, fmt.Sprintf("tensor %q is nil", name))
			continue
		}
		if n, err := NumelOf(t.Shape); err != nil || n != len(t.Data) {
			invalid = append(invalid, fmt.Sprintf("tensor %q has %d values for shape %s", name, len(t.Data), ShapeString(t.Shape)))
		}
		for i, v := range t.Data {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				nonFinite = append(nonFinite, fmt.Sprintf("tensor %q has non-finite value %v at index %d%s",
					name, v, i, multiIndex(t.Shape, len(t.Data), i)))
				break
			}
		}
		if nonNeg[name] {
			for i, v := range t.Data {
				if v < 0 {
					negative = append(negative, fmt.Sprintf("tensor %q (a BatchNorm running variance) has negative value %v at index %d%s",
						name, v, i, multiIndex(t.Shape, len(t.Data), i)))
					break
				}
			}
		}
	}
	for _, h := range unread {
		if !wanted[h.Name] && !strings.HasSuffix(h.Name, "num_batches_tracked") {
			unexpected = append(unexpected, fmt.Sprintf("unexpected tensor %q (%s %s, %d bytes; not read)", h.Name, h.DType, ShapeString(h.Shape), h.Bytes))
		}
	}
	var problems []string
	for _, g := range [][]string{missing, unexpected, shapes, invalid, nonFinite, negative, dups} {
		sort.Strings(g) // each line starts with a fixed phrase and the quoted name
		problems = append(problems, g...)
	}
	if len(problems) == 0 {
		return nil
	}
	return &WeightsError{File: file, Problems: problems}
}

// multiIndex formats flat index i of a row-major tensor of the given shape as
// " [a,b,c]", or "" if the shape does not describe n values or is a scalar.
func multiIndex(shape []int, n, i int) string {
	if m, err := NumelOf(shape); err != nil || m != n || len(shape) == 0 {
		return ""
	}
	idx := make([]string, len(shape))
	for k := len(shape) - 1; k >= 0; k-- {
		idx[k] = strconv.Itoa(i % shape[k])
		i /= shape[k]
	}
	return " [" + strings.Join(idx, ",") + "]"
}
