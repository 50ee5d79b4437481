package dsl

import (
	"fmt"
	"strconv"
	"strings"
)

// kind is the kind of a DSL value.
type kind uint8

const (
	// kPoison is the value of an expression whose elaboration failed; every
	// operation on it yields poison again without a further message, so one
	// mistake produces one diagnostic.
	kPoison kind = iota
	kTensor
	kInt
	kFloat
	kBool
	kString
	kTuple
)

var kindNames = [...]string{kPoison: "invalid value", kTensor: "tensor", kInt: "int", kFloat: "float",
	kBool: "bool", kString: "string", kTuple: "tuple"}

func (k kind) String() string { return kindNames[k] }

// value is a DSL value: a graph tensor (a node index), a number, a bool, a
// string or a tuple.
type value struct {
	k     kind
	node  int // kTensor
	i     int
	f     float64
	b     bool
	s     string
	elems []value
}

var poison = value{}

func tensorVal(n int) value    { return value{k: kTensor, node: n} }
func intVal(i int) value       { return value{k: kInt, i: i} }
func floatVal(f float64) value { return value{k: kFloat, f: f} }
func boolVal(b bool) value     { return value{k: kBool, b: b} }

func (v value) isNum() bool { return v.k == kInt || v.k == kFloat }

func (v value) num() float64 {
	if v.k == kInt {
		return float64(v.i)
	}
	return v.f
}

// isPoison reports whether v or any tuple element is poison.
func (v value) isPoison() bool {
	if v.k == kPoison {
		return true
	}
	for _, e := range v.elems {
		if e.isPoison() {
			return true
		}
	}
	return false
}

// format prints v for messages; tensors show their type via typeOf.
func (v value) format(typeOf func(int) string) string {
	switch v.k {
	case kTensor:
		return "tensor " + typeOf(v.node)
	case kInt:
		return strconv.Itoa(v.i)
	case kFloat:
		return strconv.FormatFloat(v.f, 'g', -1, 64)
	case kBool:
		return strconv.FormatBool(v.b)
	case kString:
		return strconv.Quote(v.s)
	case kTuple:
		parts := make([]string, len(v.elems))
		for i, e := range v.elems {
			parts[i] = e.format(typeOf)
		}
		return "(" + strings.Join(parts, ", ") + ")"
	}
	return fmt.Sprint(v.k)
}
