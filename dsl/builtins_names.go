package dsl

import (
	"sort"
	"strings"
)

// BuiltinNames returns the names of the builtin functions, sorted. Tools
// that document the language (internal/optable's "what compiles on which
// target" table) use it to check that they cover every builtin.
func BuiltinNames() []string {
	names := make([]string, 0, len(builtins))
	for name := range builtins {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// BuiltinSignature returns builtin name's parameter list as written in a
// call, "conv2d(x, out, kernel, stride, pad, groups, bias, dilation)";
// variadic builtins show "..." before their keyword parameters. ok is
// false when name is not a builtin.
func BuiltinSignature(name string) (sig string, ok bool) {
	b := builtins[name]
	if b == nil {
		return "", false
	}
	var ps []string
	if b.sig.variadic {
		ps = append(ps, "...")
	}
	for _, p := range b.sig.params {
		ps = append(ps, p.name)
	}
	return name + "(" + strings.Join(ps, ", ") + ")", true
}
