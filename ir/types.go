// Package ir defines Kiln's typed tensor-graph intermediate representation.
//
// A Graph is a list of Nodes in topological order; each node produces exactly one
// tensor value, identified by its index in Graph.Nodes (printed %N). Operands
// refer to earlier nodes only, so the node list is itself a valid schedule. Every
// op is described once, in the op table (ops.go): operands, attributes, shape
// rule and verifier; the printer, parser, verifier and interpreter all read it.
package ir

import (
	"fmt"
	"strconv"
	"strings"
)

// DType is an element type.
type DType uint8

// Element types. Only F32 is computed today; the others are reserved for
// reduced-precision work.
const (
	F32 DType = iota + 1
	BF16
	F16
	I8
)

var dtypeNames = map[DType]string{F32: "f32", BF16: "bf16", F16: "f16", I8: "i8"}

func (d DType) String() string {
	if s, ok := dtypeNames[d]; ok {
		return s
	}
	return fmt.Sprintf("dtype(%d)", uint8(d))
}

// ParseDType parses "f32", "bf16", "f16" or "i8".
func ParseDType(s string) (DType, error) {
	for d, n := range dtypeNames {
		if n == s {
			return d, nil
		}
	}
	return 0, fmt.Errorf("unknown dtype %q (want f32, bf16, f16 or i8)", s)
}

// Size is the size of one element in bytes (f32 4, bf16 2, f16 2, i8 1), 0
// for an unknown dtype.
func (d DType) Size() int {
	switch d {
	case F32:
		return 4
	case BF16, F16:
		return 2
	case I8:
		return 1
	}
	return 0
}

// Type is a tensor type: element type, static shape and physical layout.
// The zero Layout is the logical row-major layout (NCHW for 4-D activations,
// OIHW for conv weights). Physical layouts such as NCHW16c are introduced by
// the layout pass; Shape always stays the logical shape so that shape rules
// are layout-free.
type Type struct {
	DType  DType
	Shape  []int
	Layout Layout
}

// Numel is the number of elements of the type's logical shape.
func (t Type) Numel() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Rank is len(Shape).
func (t Type) Rank() int { return len(t.Shape) }

// Equal reports whether two types are identical.
func (t Type) Equal(u Type) bool {
	return t.DType == u.DType && t.Layout == u.Layout && ShapeEqual(t.Shape, u.Shape)
}

// String prints the type as f32[1,3,299,299] or f32[1,64,35,35]@NCHW16c.
func (t Type) String() string {
	var b strings.Builder
	b.WriteString(t.DType.String())
	b.WriteByte('[')
	for i, d := range t.Shape {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(d))
	}
	b.WriteByte(']')
	if !t.Layout.IsPlain() {
		b.WriteByte('@')
		b.WriteString(t.Layout.String())
	}
	return b.String()
}

// ShapeEqual reports whether two shapes are identical.
func ShapeEqual(a, b []int) bool {
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

// ShapeString formats a shape as 32x3x3x3 (the CLI and checkpoint convention).
func ShapeString(s []int) string {
	if len(s) == 0 {
		return "scalar"
	}
	parts := make([]string, len(s))
	for i, d := range s {
		parts[i] = strconv.Itoa(d)
	}
	return strings.Join(parts, "x")
}

// Pos is a source position: the file, 1-based line and column. The zero Pos
// means "no position" (nodes made by passes inherit the position they replace).
type Pos struct {
	File string
	Line int
	Col  int
}

// IsValid reports whether the position is set.
func (p Pos) IsValid() bool { return p.Line > 0 }

func (p Pos) String() string {
	if !p.IsValid() {
		if p.File != "" {
			return p.File
		}
		return "-"
	}
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col)
}

// Error is an error at a source position, formatted file:line:col: message.
type Error struct {
	Pos Pos
	Msg string
}

func (e *Error) Error() string {
	if e.Pos.IsValid() || e.Pos.File != "" {
		return e.Pos.String() + ": " + e.Msg
	}
	return e.Msg
}

// Errorf makes a positioned error.
func Errorf(pos Pos, format string, args ...any) *Error {
	return &Error{Pos: pos, Msg: fmt.Sprintf(format, args...)}
}
