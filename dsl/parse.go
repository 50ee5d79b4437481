package dsl

import (
	"errors"
	"math"
	"strconv"
	"strings"

	"github.com/alecthomas/participle/v2"
	"github.com/alecthomas/participle/v2/lexer"
)

// maxNesting bounds the bracket nesting depth of a declaration so that
// pathological inputs cannot make the recursive-descent parser recurse deeply.
const maxNesting = 64

// maxOperators bounds the operators (binary, unary minus, not) in one
// expression: elaboration and the static checks walk the expression tree
// recursively and a chain of n operators is a tree n deep, so a long `1+1+…`
// would otherwise overflow the Go stack. With maxNesting this bounds the
// tree's depth to about maxOperators+maxNesting.
const maxOperators = 4096

// ParseFile parses a .kiln source. It returns the File (holding every
// declaration that parsed) and, if there were syntax errors, a Diagnostics
// error listing all of them.
//
// Algorithm: the source is tokenized once (lexing never stops: bad characters
// are reported and skipped). The token stream is split before every
// `block`, `network` and `import` keyword; these keywords are reserved and only
// start top-level declarations, so a missing brace in one declaration cannot
// swallow the next. Newlines are statement separators, except inside ( ) and
// [ ] and after a token that cannot end a statement (an operator, `,`, `=`,
// `:`, `->`, `if`, `else`, `and`, `or`, `not`). Each declaration is then parsed separately with
// participle, so syntax errors in different declarations are all reported.
func ParseFile(filename string, src []byte) (*File, error) {
	dl := newDiagList()
	f := parseFile(filename, src, dl)
	return f, dl.err()
}

func parseFile(filename string, src []byte, dl *diagList) *File {
	dl.addSource(filename, src)
	f := &File{Name: filename, Src: src}
	for _, c := range tokenize(filename, src, dl) {
		if c.bad {
			f.markBroken(c.toks)
			continue
		}
		first := c.toks[0]
		if first.Type != tokType["Keyword"] || !isDeclKeyword(first.Value) {
			dl.errorf(first.Pos, "expected block, network or import declaration, found %s", describe(first))
			continue
		}
		d, err := declParser.ParseFromLexer(mustUpgrade(c.toks))
		if err != nil {
			reportParseError(dl, err, c)
			f.markBroken(c.toks)
			continue
		}
		switch {
		case d.Import != nil:
			p, err := strconv.Unquote(d.Import.Path)
			if err != nil {
				dl.errorf(d.Import.Pos, "invalid string %s", d.Import.Path)
				continue
			}
			f.Imports = append(f.Imports, &Import{Pos: d.Import.Pos, Path: p})
		case d.Block != nil:
			cv := converter{dl: dl}
			b := cv.block(d.Block)
			if cv.failed {
				f.markBroken(c.toks)
				continue
			}
			if b.Network {
				if f.Network != nil {
					dl.errorf(b.Pos, "second network %q in one file (network %q is declared at %s)", b.Name, f.Network.Name, irPos(f.Network.Pos))
					continue
				}
				f.Network = b
			} else {
				f.Blocks = append(f.Blocks, b)
			}
		}
	}
	return f
}

// markBroken records the name of a declaration that failed to parse.
func (f *File) markBroken(toks []lexer.Token) {
	if toks[0].Value == "network" {
		f.brokenNetwork = true
		return
	}
	if toks[0].Value == "block" && len(toks) > 1 && toks[1].Type == tokType["Ident"] {
		if f.broken == nil {
			f.broken = map[string]bool{}
		}
		f.broken[toks[1].Value] = true
	}
}

func isDeclKeyword(s string) bool { return s == "block" || s == "network" || s == "import" }

// chunk is the token stream of one top-level declaration, ending with an EOF
// token placed at the start of the next declaration (or at the end of file).
type chunk struct {
	toks []lexer.Token
	// end describes what follows the chunk, for "unexpected end" messages.
	end string
	bad bool
}

// continues reports whether a newline after token t is ignored.
func continues(t lexer.Token) bool {
	switch t.Value {
	case "+", "-", "*", "/", "=", ",", ":", "->", "(", "[", "{", ";", "==", "!=", "<", "<=", ">", ">=":
		return t.Type == tokType["Punct"]
	case "if", "else", "and", "or", "not":
		return t.Type == tokType["Keyword"]
	}
	return false
}

func tokenize(filename string, src []byte, dl *diagList) []chunk {
	var (
		chunks []chunk
		cur    *chunk
		open   []byte // stack of open brackets: '(', '[' or '{'
	)
	finish := func(next lexer.Token, desc string) {
		if cur == nil {
			return
		}
		toks := cur.toks
		for len(toks) > 0 && toks[len(toks)-1].Type == tokType["NL"] {
			toks = toks[:len(toks)-1]
		}
		// The EOF token sits right after the declaration's last token, where
		// whatever is missing was expected.
		end := next.Pos
		if len(toks) > 0 {
			end = toks[len(toks)-1].Pos
			end.Advance(toks[len(toks)-1].Value)
		}
		cur.toks = append(toks, lexer.Token{Type: lexer.EOF, Pos: end})
		cur.end = desc
		if len(toks) > 0 {
			chunks = append(chunks, *cur)
		}
		cur = nil
	}
	lx, err := lexDef.LexString(filename, string(src))
	if err != nil {
		dl.errorf(lexer.Position{Filename: filename, Line: 1, Column: 1}, "%v", err)
		return nil
	}
	for {
		t, err := lx.Next()
		if err != nil { // cannot happen: Invalid matches any character
			var le *lexer.Error
			if errors.As(err, &le) {
				dl.errorf(le.Pos, "%s", le.Msg)
			} else {
				dl.errorf(lexer.Position{Filename: filename, Line: 1, Column: 1}, "%v", err)
			}
			break
		}
		if t.EOF() {
			finish(t, "end of file")
			break
		}
		switch t.Type {
		case tokType["Comment"], tokType["Space"]:
			continue
		case tokType["Invalid"]:
			dl.errorf(t.Pos, "unexpected character %q", t.Value)
			if cur != nil {
				cur.bad = true // parse errors would only follow from the dropped character
			}
			continue
		case tokType["BadString"]:
			dl.errorf(t.Pos, "string literal not terminated")
			t.Type, t.Value = tokType["String"], t.Value+`"`
		case tokType["Keyword"]:
			if isDeclKeyword(t.Value) {
				finish(t, strconv.Quote(t.Value))
				open = open[:0]
			}
		}
		if cur == nil {
			if t.Type == tokType["NL"] {
				continue
			}
			cur = &chunk{}
		}
		if t.Type == tokType["NL"] {
			n := len(cur.toks)
			inBrackets := len(open) > 0 && open[len(open)-1] != '{'
			if inBrackets || n == 0 || cur.toks[n-1].Type == tokType["NL"] || continues(cur.toks[n-1]) {
				continue
			}
		}
		if t.Type == tokType["Punct"] {
			switch t.Value {
			case "(", "[", "{":
				open = append(open, t.Value[0])
			case ")", "]", "}":
				// Pop up to the matching opener; a mismatch is the parser's to report.
				for i := len(open) - 1; i >= 0; i-- {
					if open[i] == opener(t.Value[0]) {
						open = open[:i]
						break
					}
				}
			}
			if len(open) > maxNesting && !cur.bad {
				dl.errorf(t.Pos, "nesting deeper than %d levels", maxNesting)
				cur.bad = true
			}
		}
		cur.toks = append(cur.toks, t)
	}
	return chunks
}

func opener(closer byte) byte {
	switch closer {
	case ')':
		return '('
	case ']':
		return '['
	}
	return '{'
}

// sliceLexer replays a token slice; its last token is EOF.
type sliceLexer struct {
	toks []lexer.Token
	i    int
}

func (l *sliceLexer) Next() (lexer.Token, error) {
	t := l.toks[l.i]
	if l.i < len(l.toks)-1 {
		l.i++
	}
	return t, nil
}

func mustUpgrade(toks []lexer.Token) *lexer.PeekingLexer {
	pl, err := lexer.Upgrade(&sliceLexer{toks: toks})
	if err != nil {
		panic(err) // sliceLexer never fails
	}
	return pl
}

func describe(t lexer.Token) string {
	switch {
	case t.EOF():
		return "end of file"
	case t.Type == tokType["NL"]:
		return "newline"
	}
	return strconv.Quote(t.Value)
}

// reportParseError turns a participle error into a diagnostic with a
// readable token description.
func reportParseError(dl *diagList, err error, c chunk) {
	var ute *participle.UnexpectedTokenError
	if errors.As(err, &ute) {
		_, expected, hasExp := strings.Cut(ute.Message(), " (expected ")
		expected = tidyExpected(strings.TrimSuffix(expected, ")"))
		var msg string
		switch {
		case !ute.Unexpected.EOF():
			msg = "unexpected " + describe(ute.Unexpected)
			if hasExp {
				msg += " (expected " + expected + ")"
			}
		case c.end == "end of file":
			msg = "unexpected end of file"
		default:
			msg = "unexpected end of declaration"
		}
		if ute.Unexpected.EOF() && hasExp {
			msg += ": expected " + expected
		}
		dl.errorf(ute.Unexpected.Pos, "%s", msg)
		return
	}
	var pe participle.Error
	if errors.As(err, &pe) {
		msg := pe.Message()
		msg = strings.ReplaceAll(msg, `"<EOF>"`, c.end)
		dl.errorf(pe.Position(), "%s", msg)
		return
	}
	dl.errorf(c.toks[0].Pos, "%v", err)
}

// tidyExpected rewrites participle's "expected" grammar fragment into words:
// only the first term of a sequence is kept, and grammar struct names become
// what they stand for.
func tidyExpected(s string) string {
	terms := splitTop(s, ' ')
	if len(terms) > 1 && !strings.Contains(s, " | ") {
		s = terms[0]
	}
	var out []string
	seen := map[string]bool{}
	for _, alt := range strings.Split(s, " | ") {
		alt = strings.TrimSpace(alt)
		if w, ok := grammarWords[alt]; ok {
			alt = w
		}
		alt = strings.ReplaceAll(alt, "'", `"`)
		if !seen[alt] {
			seen[alt] = true
			out = append(out, alt)
		}
	}
	return strings.Join(out, " or ")
}

// splitTop splits s at sep outside quotes and parentheses.
func splitTop(s string, sep byte) []string {
	var parts []string
	depth, start := 0, 0
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '(':
			depth++
		case c == ')':
			depth--
		case c == sep && depth == 0:
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	return append(parts, s[start:])
}

var grammarWords = map[string]string{
	"GClose": `"}"`, "GBody": `"{"`, "GType": "type", "GParam": "parameter", "GArg": "argument",
	"GName": "name", "GStmt": "statement", "GDim": "dimension", "GCount": "repeat count",
	"GImport": "declaration", "GBlock": "declaration", "GExpr": "expression", "GSum": "expression",
	"GProd": "expression", "GUnary": "expression", "GOr": "expression", "GAnd": "expression",
	"GNot": "expression", "GCmp": "expression", "GIf": "statement", "GPrimary": "expression", "GSeq": "expression",
	"GRepeat": "expression", "GCall": "expression", "GParen": "expression",
	"<ident>": "name", "<number>": "number", "<kernel>": "kernel size", "<string>": "string",
	"<nl>": "newline", "NL": "newline", "Ident": "name", "Number": "number", "Kernel": "kernel size",
	"String": "string",
}

// converter turns participle's grammar structs into the exported AST.
type converter struct {
	dl     *diagList
	failed bool
	// ops counts the operators of the expression being converted (see
	// maxOperators); tooLong is set once the limit was reported.
	ops     int
	tooLong bool
}

// op counts one operator at p and reports false, once per expression at the
// operator over the limit, when the expression has more than maxOperators.
func (c *converter) op(p lexer.Position) bool {
	c.ops++
	if c.ops <= maxOperators {
		return true
	}
	if !c.tooLong {
		c.tooLong = true
		c.errorf(p, "expression has more than %d operators (split it into several assignments)", maxOperators)
	}
	return false
}

func (c *converter) errorf(p lexer.Position, format string, args ...any) {
	c.dl.errorf(p, format, args...)
	c.failed = true
}

func (c *converter) block(g *gBlock) *Block {
	b := &Block{Pos: g.Name.Pos, Network: g.Kind == "network", Name: g.Name.Value, End: g.Body.Close.Pos}
	for _, p := range g.Params {
		q := &Param{Pos: p.Pos, Name: p.Name}
		if p.Type != nil {
			q.Type = c.tensorType(p.Type)
		}
		if p.Default != nil {
			q.Default = c.expr(p.Default)
		}
		b.Params = append(b.Params, q)
	}
	if g.Result != nil {
		b.Result = c.tensorType(g.Result)
	}
	b.Body = c.stmts(g.Body.Stmts)
	return b
}

func (c *converter) stmts(gs []*gStmt) []Stmt {
	var out []Stmt
	for _, s := range gs {
		switch {
		case s.If != nil:
			out = append(out, c.ifStmt(s.If))
		case s.Return != nil:
			out = append(out, &Return{Pos: s.Pos, Value: c.expr(s.Return)})
		case s.Name != nil:
			out = append(out, &Assign{Pos: s.Pos, Name: *s.Name, Value: c.expr(s.Value)})
		default:
			out = append(out, &ExprStmt{Pos: s.Pos, X: c.expr(s.Expr)})
		}
	}
	return out
}

func (c *converter) ifStmt(g *gIf) *If {
	s := &If{Pos: g.Pos, Cond: c.expr(g.Cond), Then: c.stmts(g.Then.Stmts), ThenEnd: g.Then.Close.Pos}
	switch {
	case g.ElseIf != nil:
		s.Else = []Stmt{c.ifStmt(g.ElseIf)}
		s.ElseEnd = g.ElseIf.Pos
	case g.Else != nil:
		s.Else = c.stmts(g.Else.Stmts)
		s.ElseEnd = g.Else.Close.Pos
	}
	return s
}

func (c *converter) tensorType(g *gType) *TensorType {
	t := &TensorType{Pos: g.Pos, DType: g.DType}
	for _, d := range g.Dims {
		if d.Name != nil {
			t.Dims = append(t.Dims, &Dim{Pos: d.Pos, Name: *d.Name})
			continue
		}
		n := c.number(d.Pos, *d.Size)
		if !n.IsInt {
			c.errorf(d.Pos, "dimension %s is not an integer", *d.Size)
		}
		t.Dims = append(t.Dims, &Dim{Pos: d.Pos, Size: n.Int})
	}
	return t
}

func (c *converter) expr(g *gExpr) Expr {
	c.ops, c.tooLong = 0, false
	return c.subExpr(g)
}

// subExpr converts an expression nested in another one (a conditional's
// else branch), counting its operators with the enclosing expression's.
func (c *converter) subExpr(g *gExpr) Expr {
	then := c.or(g.Then)
	if g.Cond == nil {
		return then
	}
	return &Cond{Pos: g.Pos, Then: then, Cond: c.or(g.Cond), Else: c.subExpr(g.Else)}
}

func (c *converter) or(g *gOr) Expr {
	x := c.and(g.Left)
	for _, op := range g.Rest {
		if !c.op(op.Pos) {
			break
		}
		x = &Binary{Pos: op.Pos, Op: op.Op, X: x, Y: c.and(op.Right)}
	}
	return x
}

func (c *converter) and(g *gAnd) Expr {
	x := c.not(g.Left)
	for _, op := range g.Rest {
		if !c.op(op.Pos) {
			break
		}
		x = &Binary{Pos: op.Pos, Op: op.Op, X: x, Y: c.not(op.Right)}
	}
	return x
}

func (c *converter) not(g *gNot) Expr {
	x := c.cmp(g.X)
	for range g.Not {
		if !c.op(g.Pos) {
			break
		}
		x = &Unary{Pos: g.Pos, Op: "not", X: x}
	}
	return x
}

func (c *converter) cmp(g *gCmp) Expr {
	x := c.sum(g.Left)
	if g.Op != nil && c.op(g.Op.Pos) {
		x = &Binary{Pos: g.Op.Pos, Op: g.Op.Op, X: x, Y: c.sum(g.Op.Right)}
	}
	return x
}

func (c *converter) sum(g *gSum) Expr {
	x := c.prod(g.Left)
	for _, op := range g.Rest {
		if !c.op(op.Pos) {
			break
		}
		x = &Binary{Pos: op.Pos, Op: op.Op, X: x, Y: c.prod(op.Right)}
	}
	return x
}

func (c *converter) prod(g *gProd) Expr {
	x := c.unary(g.Left)
	for _, op := range g.Rest {
		if !c.op(op.Pos) {
			break
		}
		x = &Binary{Pos: op.Pos, Op: op.Op, X: x, Y: c.unary(op.Right)}
	}
	return x
}

func (c *converter) unary(g *gUnary) Expr {
	x := c.primary(g.X)
	for range g.Neg {
		if !c.op(g.Pos) {
			break
		}
		x = &Unary{Pos: g.Pos, Op: "-", X: x}
	}
	return x
}

func (c *converter) primary(g *gPrimary) Expr {
	switch {
	case g.Seq != nil:
		s := &Seq{Pos: g.Seq.Pos}
		for _, it := range g.Seq.Items {
			s.Items = append(s.Items, c.subExpr(it))
		}
		return s
	case g.Repeat != nil:
		r := &Repeat{Pos: g.Repeat.Pos, Call: c.call(g.Repeat.Call)}
		if n := g.Repeat.Count; n.Number != nil {
			r.Count = c.number(n.Pos, *n.Number)
		} else {
			r.Count = ident(n.Pos, *n.Ident)
		}
		return r
	case g.Call != nil:
		return c.call(g.Call)
	case g.Kernel != nil:
		h, w, _ := strings.Cut(*g.Kernel, "x")
		kh, err1 := strconv.Atoi(h)
		kw, err2 := strconv.Atoi(w)
		if err1 != nil || err2 != nil {
			c.errorf(g.Pos, "kernel size %s out of range", *g.Kernel)
		}
		return &KernelLit{Pos: g.Pos, H: kh, W: kw}
	case g.Number != nil:
		return c.number(g.Pos, *g.Number)
	case g.Bool != nil:
		return &Bool{Pos: g.Pos, Value: *g.Bool == "true"}
	case g.String != nil:
		s, err := strconv.Unquote(*g.String)
		if err != nil {
			c.errorf(g.Pos, "invalid string %s", *g.String)
		}
		return &String{Pos: g.Pos, Value: s}
	case g.Ident != nil:
		return ident(g.Pos, *g.Ident)
	case g.Paren != nil:
		if len(g.Paren.Elems) == 1 && g.Paren.Comma == nil {
			return c.subExpr(g.Paren.Elems[0])
		}
		t := &Tuple{Pos: g.Paren.Pos}
		for _, e := range g.Paren.Elems {
			t.Elems = append(t.Elems, c.subExpr(e))
		}
		return t
	}
	c.errorf(g.Pos, "empty expression")
	return &Tuple{Pos: g.Pos}
}

func ident(p lexer.Position, name string) Expr {
	if name == "_" {
		return &Placeholder{Pos: p}
	}
	return &Ident{Pos: p, Name: name}
}

func (c *converter) call(g *gCall) *Call {
	call := &Call{Pos: g.Pos, Func: g.Func}
	for _, a := range g.Args {
		arg := &Arg{Pos: a.Pos, Value: c.subExpr(a.Value)}
		if a.Name != nil {
			arg.Name = *a.Name
		}
		call.Args = append(call.Args, arg)
	}
	return call
}

func (c *converter) number(p lexer.Position, s string) *Number {
	if !strings.ContainsAny(s, ".eE") {
		v, err := strconv.Atoi(s)
		if err != nil {
			c.errorf(p, "integer %s out of range", s)
		}
		return &Number{Pos: p, IsInt: true, Int: v, Float: float64(v)}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(v, 0) {
		c.errorf(p, "number %s out of range", s)
	}
	return &Number{Pos: p, Float: v}
}
