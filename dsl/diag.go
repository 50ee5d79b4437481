package dsl

import (
	"bytes"
	"fmt"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/alecthomas/participle/v2/lexer"

	"github.com/kiln-dev/kiln/ir"
)

// Severity says whether a diagnostic stops the load.
type Severity uint8

const (
	// SeverityError is a mistake: the load fails.
	SeverityError Severity = iota
	// SeverityWarning is legal but probably unintended code: the load
	// succeeds and the warning goes to Options.Warn (or, when the load fails
	// for another reason, into the returned Diagnostics).
	SeverityWarning
)

// Diagnostic is one error or warning at a source position.
type Diagnostic struct {
	Pos      ir.Pos
	Severity Severity
	Msg      string
	// Line is the source line at Pos (without the newline), shown with a caret.
	Line string
	// Notes are extra lines printed after the caret, such as the block call
	// chain that led to an error inside a block.
	Notes []string
}

// String formats the diagnostic as
//
//	file:line:col: message           (a warning: file:line:col: warning: message)
//	<source line>
//	      ^
//	    note...
func (d *Diagnostic) String() string {
	var b strings.Builder
	b.WriteString(d.Pos.String())
	b.WriteString(": ")
	if d.Severity == SeverityWarning {
		b.WriteString("warning: ")
	}
	b.WriteString(d.Msg)
	if d.Pos.IsValid() && d.Line != "" {
		b.WriteString("\n")
		b.WriteString(d.Line)
		b.WriteString("\n")
		b.WriteString(caretPrefix(d.Line, d.Pos.Col))
		b.WriteString("^")
	}
	for _, n := range d.Notes {
		b.WriteString("\n\t")
		b.WriteString(n)
	}
	return b.String()
}

// caretPrefix returns the indentation that puts a caret under column col
// (1-based, counted in runes) of line, keeping tabs so the caret aligns.
func caretPrefix(line string, col int) string {
	var b strings.Builder
	i := 1
	for _, r := range line {
		if i >= col {
			break
		}
		if r == '\t' {
			b.WriteByte('\t')
		} else {
			b.WriteByte(' ')
		}
		i++
	}
	for ; i < col; i++ {
		b.WriteByte(' ')
	}
	return b.String()
}

// Diagnostics is the error type of parsing and elaboration: every problem
// found, sorted by position (file name, line, column). It holds at least one
// error; warnings found in the same load are included, since they often
// explain an error (see Options.Warn).
type Diagnostics []*Diagnostic

// Error prints all diagnostics, one after the other.
func (ds Diagnostics) Error() string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = d.String()
	}
	return strings.Join(parts, "\n")
}

// Sort orders the diagnostics by file, line and column (stable).
func (ds Diagnostics) Sort() {
	sort.SliceStable(ds, func(i, j int) bool {
		a, b := ds[i].Pos, ds[j].Pos
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
}

// diagList collects diagnostics, dropping exact duplicates (same position and
// message, as produced by a block elaborated several times).
type diagList struct {
	list Diagnostics
	seen map[string]bool
	srcs map[string][]byte // file name -> source, for the caret line
	// starts maps a file name to the byte offsets where its lines start,
	// built on the first diagnostic in the file, so finding a diagnostic's
	// line costs O(1) rather than a scan from the start of the file (which
	// made n diagnostics cost O(n × file size)).
	starts map[string][]int
}

// line returns line n (1-based) of the registered source name for display,
// with sourceLine's rules.
func (l *diagList) line(name string, n int) string {
	src := l.srcs[name]
	if n <= 0 || src == nil {
		return ""
	}
	st, ok := l.starts[name]
	if !ok {
		st = []int{0}
		for i, b := range src {
			if b == '\n' {
				st = append(st, i+1)
			}
		}
		if l.starts == nil {
			l.starts = map[string][]int{}
		}
		l.starts[name] = st
	}
	if n > len(st) {
		return ""
	}
	return sourceLine(src[st[n-1]:], 1)
}

func newDiagList() *diagList {
	return &diagList{seen: map[string]bool{}, srcs: map[string][]byte{}}
}

func (l *diagList) addSource(name string, src []byte) { l.srcs[name] = src }

// errorf records an error at p.
func (l *diagList) errorf(p lexer.Position, format string, args ...any) *Diagnostic {
	return l.add(irPos(p), fmt.Sprintf(format, args...))
}

func (l *diagList) add(p ir.Pos, msg string, notes ...string) *Diagnostic {
	return l.addSeverity(SeverityError, p, msg, notes...)
}

// warn records a warning at p.
func (l *diagList) warn(p ir.Pos, msg string, notes ...string) *Diagnostic {
	return l.addSeverity(SeverityWarning, p, msg, notes...)
}

func (l *diagList) addSeverity(sev Severity, p ir.Pos, msg string, notes ...string) *Diagnostic {
	key := p.String() + "\x00" + msg
	if l.seen[key] {
		return nil
	}
	l.seen[key] = true
	d := &Diagnostic{Pos: p, Severity: sev, Msg: msg, Line: l.line(p.File, p.Line), Notes: notes}
	l.list = append(l.list, d)
	return d
}

// errors counts the diagnostics of error severity.
func (l *diagList) errors() int {
	n := 0
	for _, d := range l.list {
		if d.Severity == SeverityError {
			n++
		}
	}
	return n
}

// err returns the sorted diagnostics, warnings included, if there is at
// least one error; otherwise nil.
func (l *diagList) err() error {
	if l.errors() == 0 {
		return nil
	}
	out := append(Diagnostics(nil), l.list...)
	out.Sort()
	return out
}

// warnings returns the warnings, sorted.
func (l *diagList) warnings() Diagnostics {
	var out Diagnostics
	for _, d := range l.list {
		if d.Severity == SeverityWarning {
			out = append(out, d)
		}
	}
	out.Sort()
	return out
}

// maxShownLine is the longest source line a diagnostic shows.
const maxShownLine = 1000

// sourceLine returns line (1-based) of src for display under a diagnostic,
// or "" when there is none or it does not look like source text: longer than
// maxShownLine bytes, not UTF-8, or holding control characters other than
// tab. Only sources parsed as .kiln files are registered (parseFile), and
// imports of anything else are refused (loader.load); this is the second
// guard, so that a diagnostic never dumps binary or foreign data.
func sourceLine(src []byte, line int) string {
	l := rawSourceLine(src, line)
	if len(l) > maxShownLine || !utf8.ValidString(l) {
		return ""
	}
	for _, r := range l {
		if r != '\t' && (unicode.IsControl(r) || r == utf8.RuneError) {
			return ""
		}
	}
	return l
}

func rawSourceLine(src []byte, line int) string {
	if line <= 0 || src == nil {
		return ""
	}
	for i := 1; i < line; i++ {
		k := bytes.IndexByte(src, '\n')
		if k < 0 {
			return ""
		}
		src = src[k+1:]
	}
	if k := bytes.IndexByte(src, '\n'); k >= 0 {
		src = src[:k]
	}
	return strings.TrimRight(string(src), "\r")
}

func irPos(p lexer.Position) ir.Pos { return ir.Pos{File: p.Filename, Line: p.Line, Col: p.Column} }
