package ir

import (
	"fmt"
	"strconv"
	"strings"
	"text/scanner"
)

// Parse reads the text form written by Print. Each node is rebuilt with
// Graph.Add, so shape inference re-checks the printed types: a type that
// differs from the inferred one is an error. Errors are "name:line:col: msg".
func Parse(filename string, src string) (g *Graph, err error) {
	p := &parser{file: filename}
	p.s.Init(strings.NewReader(src))
	p.s.Filename = filename
	p.s.Mode = scanner.ScanIdents | scanner.ScanInts | scanner.ScanFloats | scanner.ScanStrings | scanner.ScanComments | scanner.SkipComments
	p.s.Whitespace = 1<<'\t' | 1<<' ' | 1<<'\r' | 1<<'\n'
	p.s.Error = func(s *scanner.Scanner, msg string) { p.fail(s.Position, "%s", msg) }
	defer func() {
		if r := recover(); r != nil {
			pe, ok := r.(parseError)
			if !ok {
				panic(r)
			}
			g, err = nil, pe.err
		}
	}()
	p.next()
	return p.graph(), nil
}

type parseError struct{ err error }

type parser struct {
	file string
	s    scanner.Scanner
	tok  rune
	text string
	pos  scanner.Position
}

func (p *parser) next() {
	p.tok = p.s.Scan()
	p.text = p.s.TokenText()
	p.pos = p.s.Position
}

func (p *parser) fail(pos scanner.Position, format string, args ...any) {
	panic(parseError{&Error{Pos: Pos{File: p.file, Line: pos.Line, Col: pos.Column}, Msg: fmt.Sprintf(format, args...)}})
}

func (p *parser) describe() string {
	if p.tok == scanner.EOF {
		return "end of input"
	}
	return strconv.Quote(p.text)
}

func (p *parser) expect(tok rune, what string) string {
	if p.tok != tok {
		p.fail(p.pos, "expected %s, found %s", what, p.describe())
	}
	t := p.text
	p.next()
	return t
}

func (p *parser) keyword(kw string) {
	if p.tok != scanner.Ident || p.text != kw {
		p.fail(p.pos, "expected %q, found %s", kw, p.describe())
	}
	p.next()
}

func (p *parser) str() string {
	t := p.expect(scanner.String, "a quoted string")
	s, err := strconv.Unquote(t)
	if err != nil {
		p.fail(p.pos, "bad string %s", t)
	}
	return s
}

func (p *parser) integer() int {
	neg := false
	if p.tok == '-' {
		neg = true
		p.next()
	}
	t := p.expect(scanner.Int, "an integer")
	v, err := strconv.Atoi(t)
	if err != nil {
		p.fail(p.pos, "bad integer %s", t)
	}
	if neg {
		v = -v
	}
	return v
}

func (p *parser) ref() int {
	p.expect('%', "'%'")
	return p.integer()
}

func (p *parser) graph() *Graph {
	p.keyword("graph")
	g := &Graph{}
	if p.tok == scanner.String {
		g.Name = p.str()
	} else {
		g.Name = p.expect(scanner.Ident, "graph name")
	}
	p.expect('{', "'{'")
	for p.tok == '%' {
		pos := p.pos
		id := p.ref()
		if id != len(g.Nodes) {
			p.fail(pos, "node %%%d out of sequence, want %%%d", id, len(g.Nodes))
		}
		p.expect('=', "'='")
		n := p.node()
		declared, declaredResults := n.Type, n.Results
		if !HasDeclaredType(n.Op) {
			n.Type, n.Results = Type{Layout: declared.Layout}, nil
		}
		if _, err := g.Add(n); err != nil {
			p.fail(pos, "%v", err)
		}
		if !n.Type.Equal(declared) {
			p.fail(pos, "node %%%d: printed type %s differs from inferred %s", id, declared, n.Type)
		}
		if len(declaredResults) != len(n.Results) {
			p.fail(pos, "node %%%d: printed %d result types, %s has %d results", id, len(declaredResults), n.Op, max(1, len(n.Results)))
		}
		for k := range declaredResults {
			if !declaredResults[k].Equal(n.Results[k]) {
				p.fail(pos, "node %%%d: printed result %d type %s differs from inferred %s", id, k, declaredResults[k], n.Results[k])
			}
		}
	}
	p.keyword("return")
	for {
		pos := p.pos
		o := p.ref()
		if o < 0 || o >= len(g.Nodes) {
			p.fail(pos, "return of undefined %%%d", o)
		}
		g.Outputs = append(g.Outputs, o)
		if p.tok != ',' {
			break
		}
		p.next()
	}
	for p.tok == scanner.Ident && p.text == "mark" {
		p.next()
		name := p.str()
		pos := p.pos
		id := p.ref()
		if id < 0 || id >= len(g.Nodes) {
			p.fail(pos, "mark of undefined %%%d", id)
		}
		g.Marks = append(g.Marks, Mark{name, id})
	}
	for p.tok == scanner.Ident && p.text == "update" {
		p.next()
		pos := p.pos
		u := Update{Param: p.ref(), Value: p.ref()}
		if u.Param < 0 || u.Param >= len(g.Nodes) || u.Value < 0 || u.Value >= len(g.Nodes) {
			p.fail(pos, "update of undefined node")
		}
		g.Updates = append(g.Updates, u)
	}
	p.expect('}', "'}'")
	if p.tok != scanner.EOF {
		p.fail(p.pos, "unexpected %s after graph", p.describe())
	}
	return g
}

func (p *parser) node() *Node {
	opPos := p.pos
	n := &Node{Op: p.expect(scanner.Ident, "op name")}
	def := Lookup(n.Op)
	if def == nil {
		p.fail(opPos, "unknown op %q", n.Op)
	}
	if p.tok == scanner.String {
		n.Name = p.str()
	}
	if p.tok == '(' {
		p.next()
		for p.tok != ')' {
			n.Args = append(n.Args, p.ref())
			if p.tok == ',' {
				p.next()
			} else if p.tok != ')' {
				p.fail(p.pos, "expected ',' or ')', found %s", p.describe())
			}
		}
		p.next()
	}
	if p.tok == '{' {
		p.next()
		n.Attrs = Attrs{}
		for p.tok != '}' {
			kpos := p.pos
			k := p.expect(scanner.Ident, "attribute name")
			a := def.Attr(k)
			if a == nil {
				p.fail(kpos, "%s has no attribute %q", n.Op, k)
			}
			if _, dup := n.Attrs[k]; dup {
				p.fail(kpos, "duplicate attribute %q", k)
			}
			p.expect('=', "'='")
			n.Attrs[k] = p.attrValue(a.Kind)
			if p.tok == ',' {
				p.next()
			} else if p.tok != '}' {
				p.fail(p.pos, "expected ',' or '}', found %s", p.describe())
			}
		}
		p.next()
	}
	p.expect(':', "':'")
	if p.tok == '(' {
		// Several results: (type, type, ...).
		p.next()
		for {
			n.Results = append(n.Results, p.typ())
			if p.tok != ',' {
				break
			}
			p.next()
		}
		p.expect(')', "')'")
		if len(n.Results) < 2 {
			p.fail(opPos, "a result tuple needs at least two types")
		}
	} else {
		n.Type = p.typ()
	}
	if p.tok == scanner.Ident && p.text == "loc" {
		p.next()
		p.expect('(', "'('")
		n.Pos.File = p.str()
		p.expect(':', "':'")
		n.Pos.Line = p.integer()
		p.expect(':', "':'")
		n.Pos.Col = p.integer()
		p.expect(')', "')'")
	}
	return n
}

func (p *parser) attrValue(k AttrKind) any {
	pos := p.pos
	switch k {
	case AttrInt:
		return p.integer()
	case AttrFloat:
		neg := false
		if p.tok == '-' {
			neg = true
			p.next()
		}
		if p.tok != scanner.Float && p.tok != scanner.Int {
			p.fail(pos, "expected a number, found %s", p.describe())
		}
		v, err := strconv.ParseFloat(p.text, 64)
		if err != nil {
			p.fail(pos, "bad number %s", p.text)
		}
		p.next()
		if neg {
			v = -v
		}
		return v
	case AttrBool:
		t := p.expect(scanner.Ident, "true or false")
		if t != "true" && t != "false" {
			p.fail(pos, "expected true or false, found %q", t)
		}
		return t == "true"
	case AttrString:
		return p.str()
	case AttrInts:
		p.expect('[', "'['")
		l := []int{}
		for p.tok != ']' {
			l = append(l, p.integer())
			if p.tok == ',' {
				p.next()
			} else if p.tok != ']' {
				p.fail(p.pos, "expected ',' or ']', found %s", p.describe())
			}
		}
		p.next()
		return l
	}
	p.fail(pos, "unsupported attribute kind")
	return nil
}

func (p *parser) typ() Type {
	pos := p.pos
	dt, err := ParseDType(p.expect(scanner.Ident, "element type"))
	if err != nil {
		p.fail(pos, "%v", err)
	}
	t := Type{DType: dt, Shape: []int{}}
	p.expect('[', "'['")
	for p.tok != ']' {
		t.Shape = append(t.Shape, p.integer())
		if p.tok == ',' {
			p.next()
		} else if p.tok != ']' {
			p.fail(p.pos, "expected ',' or ']', found %s", p.describe())
		}
	}
	p.next()
	if p.tok == '@' {
		p.next()
		lpos := p.pos
		l, err := ParseLayout(p.expect(scanner.Ident, "layout name"))
		if err != nil {
			p.fail(lpos, "%v", err)
		}
		t.Layout = l
	}
	return t
}
