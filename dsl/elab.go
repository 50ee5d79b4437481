package dsl

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/alecthomas/participle/v2/lexer"

	"github.com/kiln-dev/kiln/ir"
)

// maxCallDepth bounds nested block calls (recursion is rejected statically;
// this is a second line of defence).
const maxCallDepth = 256

// elab elaborates one network into a graph.
//
// Algorithm: a direct tree-walking evaluation. Block calls bind their
// arguments and evaluate the body in a fresh variable environment; every
// primitive call appends its param nodes (in call order, which is therefore
// checkpoint order) and then its op node through ir.Graph.Add, which infers
// the shape. A failure is reported once, at the call, and yields poison,
// which every later operation propagates silently.
type elab struct {
	g      *ir.Graph
	dl     *diagList
	opts   Options
	lim    Limits
	params map[string]paramOrigin
	// paramBytes sums the parameters' sizes (Limits.MaxParamBytes).
	paramBytes float64
	// created lists the parameter keys in creation order, duplicates
	// included (for the nested-call warning); anon is set while a builtin runs that takes its enclosing
	// body's scope path (nested in an argument, returned or unassigned);
	// warned holds the positions already warned about.
	created []string
	anon    bool
	fn      string // the builtin running
	warned  map[ir.Pos]bool
	stack   []frame
	steps   int
	aborted bool
}

// paramOrigin records where a parameter was created: the primitive call and
// the outermost block call that led to it.
type paramOrigin struct{ pos, origin ir.Pos }

// frame is an active block call.
type frame struct {
	b    *Block
	call lexer.Position
}

// env is the evaluation environment of one block body (or seq item).
type env struct {
	u     *unit
	vars  map[string]value
	scope string // scope path of the body: names of nested and unassigned calls
	prev  *value // `_`, inside a seq item after the first
	// skipped maps a name assigned only in an if branch that was not taken
	// to that if's position, for the "undefined" message.
	skipped map[string]lexer.Position
	inSeq   bool
	network bool // network level: assignments are marked
}

func newElab(opts Options, dl *diagList) *elab {
	return &elab{g: &ir.Graph{}, dl: dl, opts: opts, lim: opts.Limits.withDefaults(), params: map[string]paramOrigin{},
		warned: map[ir.Pos]bool{}}
}

// join appends a path segment to a scope path.
func join(scope, name string) string {
	if scope == "" {
		return name
	}
	return scope + "." + name
}

// report records an error at pos, noting the chain of block calls that led
// there.
func (e *elab) report(pos lexer.Position, msg string) {
	if e.aborted {
		return
	}
	e.dl.add(irPos(pos), msg, e.callChain()...)
}

// reportNotes is report with notes placed before the call chain.
func (e *elab) reportNotes(pos lexer.Position, msg string, notes ...string) {
	if e.aborted {
		return
	}
	e.dl.add(irPos(pos), msg, append(notes, e.callChain()...)...)
}

// callChain describes the innermost block calls (at most four).
func (e *elab) callChain() []string {
	var notes []string
	for i := len(e.stack) - 1; i >= 0 && len(notes) < 4; i-- {
		notes = append(notes, fmt.Sprintf("in block %s called at %s", e.stack[i].b.Name, irPos(e.stack[i].call)))
	}
	return notes
}

func (e *elab) abort(pos lexer.Position, format string, args ...any) {
	e.report(pos, fmt.Sprintf(format, args...))
	e.aborted = true
}

func (e *elab) typeString(n int) string { return e.g.Nodes[n].Type.String() }

func (e *elab) anyFailed(ids []int) bool {
	for _, id := range ids {
		if id < 0 {
			return true
		}
	}
	return false
}

// node appends an op node named name and returns it as a tensor value.
func (e *elab) node(pos lexer.Position, op, name string, args []int, attrs ir.Attrs) value {
	if e.aborted {
		return poison
	}
	if len(e.g.Nodes) >= e.lim.MaxNodes {
		e.abort(pos, "network exceeds the limit of %d nodes", e.lim.MaxNodes)
		return poison
	}
	id, err := e.g.Add(&ir.Node{Op: op, Name: name, Args: args, Attrs: attrs, Pos: irPos(pos)})
	if err != nil {
		e.report(pos, irMessage(err))
		return poison
	}
	if !e.checkBytes(pos, e.g.Nodes[id]) {
		return poison
	}
	return tensorVal(id)
}

// checkBytes enforces Limits.MaxTensorBytes on n's value and
// Limits.MaxParamBytes on the parameters so far, aborting with a positioned
// message. Sizes are computed in float64: a shape of four dimensions of up
// to MaxSize each overflows int64.
func (e *elab) checkBytes(pos lexer.Position, n *ir.Node) bool {
	types := n.Results
	if len(types) == 0 {
		types = []ir.Type{n.Type}
	}
	for _, t := range types {
		b := float64(max(t.DType.Size(), 1))
		for _, d := range t.Shape {
			b *= float64(d)
		}
		if b > float64(e.lim.MaxTensorBytes) {
			e.abort(pos, "%s %s is %.3g bytes, over the limit of %d bytes per tensor (raise it with --max-tensor-bytes)", n.Op, t, b, e.lim.MaxTensorBytes)
			return false
		}
		if n.Op == ir.OpParam {
			e.paramBytes += b
			if e.paramBytes > float64(e.lim.MaxParamBytes) {
				e.abort(pos, "the parameters reach %.3g bytes at %s, over the limit of %d bytes (raise it with --max-param-bytes)", e.paramBytes, n.Name, e.lim.MaxParamBytes)
				return false
			}
		}
	}
	return true
}

func irMessage(err error) string {
	var ie *ir.Error
	if errors.As(err, &ie) {
		return ie.Msg
	}
	return err.Error()
}

// param appends a param node with checkpoint key key; -1 on error.
func (e *elab) param(pos lexer.Position, key string, shape []int, buffer bool) int {
	if e.aborted {
		return -1
	}
	e.created = append(e.created, key)
	if prev, dup := e.params[key]; dup {
		where := "at " + prev.pos.String()
		if prev.pos == irPos(pos) {
			where = "by the call at " + prev.origin.String()
		}
		msg, hint := duplicateMsg(key, where, e.fn, e.anon)
		e.reportNotes(pos, msg, hint)
		return -1
	}
	if len(e.g.Nodes) >= e.lim.MaxNodes {
		e.abort(pos, "network exceeds the limit of %d nodes", e.lim.MaxNodes)
		return -1
	}
	n := &ir.Node{Op: ir.OpParam, Name: key, Type: ir.Type{DType: ir.F32, Shape: shape}, Pos: irPos(pos)}
	if buffer {
		n.Attrs = ir.Attrs{"buffer": true}
	}
	id, err := e.g.Add(n)
	if err != nil {
		e.report(pos, irMessage(err))
		return -1
	}
	if !e.checkBytes(pos, n) {
		return -1
	}
	// Remember the outermost call that created the parameter: inside a block,
	// pos is the same for every call.
	origin := irPos(pos)
	if len(e.stack) > 0 {
		origin = irPos(e.stack[0].call)
	}
	e.params[key] = paramOrigin{pos: irPos(pos), origin: origin}
	return id
}

// duplicateMsg explains a duplicate checkpoint key: the message, and a hint
// naming the rule that produced it (docs/DSL.md §6) and the fix. anon: the
// creating call took its enclosing body's scope path (rule 2).
func duplicateMsg(key, where, fn string, anon bool) (msg, hint string) {
	msg = fmt.Sprintf("duplicate parameter %s (first created %s)", key, where)
	scope := "the network's top level"
	if i := strings.LastIndexByte(key, '.'); i >= 0 {
		scope = key[:i]
	}
	if anon {
		return msg, fmt.Sprintf("hint: a call nested in an argument or operand, returned or not assigned is named by the scope it is written in (%s), "+
			"so two such calls creating parameters there clash; assign each to a name of its own (%s = %s(...)) and pass the name", scope, fn, fn)
	}
	return msg, fmt.Sprintf("hint: two calls got the same scope path %s (a name assigned twice, or a block called twice without a name of its own); "+
		"give each call a name of its own", scope)
}

// nested evaluates x, an operand or argument of an expression whose scope
// path is outer, in the enclosing body's scope (naming rule 2). When outer
// differs from that scope and x creates parameters, it warns: the parameters
// are not named under outer, which is rarely what the author meant
// (`a = batchnorm(conv2d(x, ...))` names the conv's weight "weight", not
// "a.weight", and a second such line clashes).
func (e *elab) nested(en *env, x Expr, outer string) value {
	before := len(e.created)
	v := e.eval(en, x, en.scope, false)
	if outer == en.scope || len(e.created) == before || e.aborted {
		return v
	}
	pos := irPos(x.Position())
	if e.warned[pos] {
		return v
	}
	e.warned[pos] = true
	keys := e.created[before:]
	list := keys[0]
	if len(keys) > 1 {
		list += ", " + keys[1]
	}
	if len(keys) > 2 {
		list += ", ..."
	}
	what, fix := "this expression", "name = ..."
	if c, ok := x.(*Call); ok {
		what, fix = c.Func+"(...)", c.Func+" = "+c.Func+"(...)"
	}
	scope := "the network's top level"
	if en.scope != "" {
		scope = en.scope
	}
	e.dl.warn(pos, fmt.Sprintf("%s nested in an expression named %s creates %s, not names under %s", what, outer, list, outer),
		append([]string{fmt.Sprintf("hint: a call nested in an argument or operand is named by the scope it is written in (%s); "+
			"assign it to a name of its own first (%s) and pass the name", scope, fix)}, e.callChain()...)...)
	return v
}

// network elaborates the network declaration nb of unit u.
func (e *elab) network(u *unit, nb *Block) *ir.Graph {
	e.g.Name = nb.Name
	batch := e.opts.Batch
	if batch == 0 {
		batch = 1
	}
	if batch < 0 || batch > e.lim.MaxSize {
		e.report(nb.Pos, fmt.Sprintf("batch size %d out of range", batch))
		return e.g
	}
	vars := map[string]value{}
	en := &env{u: u, vars: vars, network: true}
	first := true
	declared := map[string]bool{}
	for _, p := range nb.Params {
		if p.Type == nil {
			declared[p.Name] = true
			if v, ok := e.opts.Params[p.Name]; ok {
				vars[p.Name] = floatVal(v)
				if v == math.Trunc(v) && math.Abs(v) < 1<<53 {
					vars[p.Name] = intVal(int(v))
				}
			} else if p.Default != nil {
				vars[p.Name] = e.eval(en, p.Default, "", false)
			}
			continue
		}
		vars[p.Name] = e.input(p, batch, first)
		first = false
	}
	for _, name := range slices.Sorted(maps.Keys(e.opts.Params)) {
		if !declared[name] {
			e.report(nb.Pos, fmt.Sprintf("network %s has no constant parameter %q to set", nb.Name, name))
			return e.g
		}
	}
	out, retPos, _ := e.body(en, nb.Body)
	if out.isPoison() {
		return e.g
	}
	if out.k != kTensor {
		e.report(retPos, "a network must return a tensor, got "+out.format(e.typeString))
		return e.g
	}
	e.g.Outputs = []int{out.node}
	if r := nb.Result; r != nil {
		want := make([]int, len(r.Dims))
		for i, d := range r.Dims {
			want[i] = d.Size
			if d.Name == "N" {
				want[i] = batch
			}
		}
		if got := e.g.Nodes[out.node].Type.Shape; !ir.ShapeEqual(got, want) {
			e.report(r.Pos, fmt.Sprintf("network returns shape %s, but declares %s", ir.ShapeString(got), ir.ShapeString(want)))
		}
	}
	return e.g
}

// input creates the input node for network parameter p. N is the batch;
// Options.InputShape replaces the other dimensions of the first input.
func (e *elab) input(p *Param, batch int, first bool) value {
	t := p.Type
	ok := true
	var shape []int
	var sample []int // indices of the non-batch dimensions
	for _, d := range t.Dims {
		switch {
		case d.Name == "N":
			shape = append(shape, batch)
			continue
		case d.Name != "":
			e.report(d.Pos, fmt.Sprintf("unknown dimension %s (only N, the batch size, may be symbolic)", d.Name))
			ok = false
		case d.Size <= 0:
			e.report(d.Pos, fmt.Sprintf("dimension must be positive, got %d", d.Size))
			ok = false
		case d.Size > e.lim.MaxSize:
			e.report(d.Pos, fmt.Sprintf("dimension %d exceeds the size limit %d", d.Size, e.lim.MaxSize))
			ok = false
		}
		sample = append(sample, len(shape))
		shape = append(shape, d.Size)
	}
	if len(shape) == 0 {
		e.report(t.Pos, "an input needs at least one dimension")
		ok = false
	}
	if first && e.opts.InputShape != nil {
		if len(e.opts.InputShape) != len(sample) {
			e.report(t.Pos, fmt.Sprintf("input shape option %v has %d dimensions, but input %s declares %d besides N",
				e.opts.InputShape, len(e.opts.InputShape), p.Name, len(sample)))
			ok = false
		} else {
			for j, i := range sample {
				if d := e.opts.InputShape[j]; d <= 0 || d > e.lim.MaxSize {
					e.report(t.Pos, fmt.Sprintf("input shape option %v: dimension %d out of range", e.opts.InputShape, d))
					ok = false
				} else {
					shape[i] = d
				}
			}
		}
	}
	dt, err := ir.ParseDType(t.DType)
	if err != nil {
		e.report(t.Pos, err.Error())
		ok = false
	}
	if !ok {
		return poison
	}
	id, err := e.g.Add(&ir.Node{Op: ir.OpInput, Name: p.Name, Type: ir.Type{DType: dt, Shape: shape}, Pos: irPos(p.Pos)})
	if err != nil {
		e.report(p.Pos, irMessage(err))
		return poison
	}
	return tensorVal(id)
}

// body runs the statements of a block or network and returns the returned
// value, the return statement's position and whether a return was reached.
// An if statement runs the chosen branch's statements in the same
// environment (same variables, same scope path); a return inside it returns
// from the whole body.
func (e *elab) body(en *env, stmts []Stmt) (value, lexer.Position, bool) {
	for _, s := range stmts {
		if e.aborted {
			return poison, lexer.Position{}, true
		}
		switch s := s.(type) {
		case *Assign:
			path := join(en.scope, s.Name)
			v := e.eval(en, s.Value, path, en.network)
			en.vars[s.Name] = v
			if en.network && v.k == kTensor {
				e.g.SetMark(path, v.node)
			}
		case *Return:
			return e.eval(en, s.Value, en.scope, false), s.Pos, true
		case *ExprStmt:
			e.eval(en, s.X, en.scope, false)
		case *If:
			c, ok := e.cond(s.Cond, e.eval(en, s.Cond, en.scope, false))
			if !ok {
				// Neither branch runs; the variables they would assign are
				// poison so that later uses stay silent.
				poisonAssigned(en, s.Then)
				poisonAssigned(en, s.Else)
				continue
			}
			branch, other := s.Else, s.Then
			if c {
				branch, other = s.Then, s.Else
			}
			noteSkipped(en, other, s.Pos)
			if v, pos, done := e.body(en, branch); done {
				return v, pos, true
			}
		}
	}
	return poison, lexer.Position{}, false
}

// noteSkipped records the names assigned in stmts, the branch not taken of
// the if at pos, that are not defined (yet).
func noteSkipped(en *env, stmts []Stmt, pos lexer.Position) {
	for _, s := range stmts {
		switch s := s.(type) {
		case *Assign:
			if _, ok := en.vars[s.Name]; !ok {
				if en.skipped == nil {
					en.skipped = map[string]lexer.Position{}
				}
				en.skipped[s.Name] = pos
			}
		case *If:
			noteSkipped(en, s.Then, pos)
			noteSkipped(en, s.Else, pos)
		}
	}
}

// poisonAssigned binds every variable assigned in stmts (at any depth) to
// poison.
func poisonAssigned(en *env, stmts []Stmt) {
	for _, s := range stmts {
		switch s := s.(type) {
		case *Assign:
			en.vars[s.Name] = poison
		case *If:
			poisonAssigned(en, s.Then)
			poisonAssigned(en, s.Else)
		}
	}
}

// cond checks that v, the value of condition x, is a bool known at
// elaboration time. A tensor is a run-time value: the network's structure
// cannot depend on it.
func (e *elab) cond(x Expr, v value) (bool, bool) {
	switch {
	case v.isPoison():
		return false, false
	case v.k == kBool:
		return v.b, true
	case v.k == kTensor:
		e.report(x.Position(), "condition must be a bool known when the network is built, got run-time "+v.format(e.typeString)+
			" (conditions select the network's structure; they cannot depend on tensor values)")
		return false, false
	}
	e.report(x.Position(), "condition must be a bool, got "+v.format(e.typeString))
	return false, false
}

// eval evaluates x. scope is the scope path given to x's outermost call (or
// operator, seq or repeat); nested expressions use en.scope. With mark set,
// the numbered children of a seq or repeat at the root of x are marked.
func (e *elab) eval(en *env, x Expr, scope string, mark bool) value {
	if e.aborted {
		return poison
	}
	if e.steps++; e.steps > e.lim.MaxSteps {
		e.abort(x.Position(), "elaboration takes more than %d steps", e.lim.MaxSteps)
		return poison
	}
	switch x := x.(type) {
	case *Number:
		if x.IsInt {
			return intVal(x.Int)
		}
		return floatVal(x.Float)
	case *Bool:
		return boolVal(x.Value)
	case *String:
		return value{k: kString, s: x.Value}
	case *KernelLit:
		return value{k: kTuple, elems: []value{intVal(x.H), intVal(x.W)}}
	case *Tuple:
		t := value{k: kTuple}
		for _, el := range x.Elems {
			t.elems = append(t.elems, e.eval(en, el, en.scope, false))
		}
		return t
	case *Ident:
		v, ok := en.vars[x.Name]
		if !ok {
			msg := undefinedMsg(en.u, x.Name, keysOf(en.vars))
			if p, ok := en.skipped[x.Name]; ok {
				msg = fmt.Sprintf("undefined: %s (it is assigned only in the branch not taken of the if at %s)", x.Name, irPos(p))
			}
			e.report(x.Pos, msg)
			return poison
		}
		return v
	case *Placeholder:
		if en.prev == nil {
			e.report(x.Pos, placeholderMsg(en.inSeq, false))
			return poison
		}
		return *en.prev
	case *Unary:
		if x.Op == "not" {
			v := e.eval(en, x.X, en.scope, false)
			b, ok := e.boolOperand(x.Pos, "not", v)
			if !ok {
				return poison
			}
			return boolVal(!b)
		}
		return e.negate(x.Pos, e.nested(en, x.X, scope), scope)
	case *Binary:
		if x.Op == "and" || x.Op == "or" {
			return e.logical(en, x)
		}
		a := e.nested(en, x.X, scope)
		b := e.nested(en, x.Y, scope)
		return e.binary(x, a, b, scope)
	case *Cond:
		c, ok := e.cond(x.Cond, e.eval(en, x.Cond, en.scope, false))
		if !ok {
			return poison
		}
		if c {
			return e.eval(en, x.Then, scope, mark)
		}
		return e.eval(en, x.Else, scope, mark)
	case *Call:
		return e.apply(en, x, e.evalArgs(en, x, scope), scope)
	case *Seq:
		return e.seq(en, x, scope, mark)
	case *Repeat:
		v, _ := e.repeat(en, x, scope, 0, mark)
		return v
	}
	e.report(x.Position(), fmt.Sprintf("internal error: unknown expression %T", x))
	return poison
}

// logical evaluates `a and b` / `a or b` with Python's short-circuit rule:
// b is evaluated only when a does not decide the result. Both operands must
// be bools.
func (e *elab) logical(en *env, x *Binary) value {
	a, ok := e.boolOperand(x.Pos, x.Op, e.eval(en, x.X, en.scope, false))
	if !ok {
		return poison
	}
	if a == (x.Op == "or") {
		return boolVal(a)
	}
	b, ok := e.boolOperand(x.Pos, x.Op, e.eval(en, x.Y, en.scope, false))
	if !ok {
		return poison
	}
	return boolVal(b)
}

// boolOperand checks an operand of not, and, or.
func (e *elab) boolOperand(pos lexer.Position, op string, v value) (bool, bool) {
	switch {
	case v.isPoison():
		return false, false
	case v.k == kBool:
		return v.b, true
	case v.k == kTensor:
		e.report(pos, fmt.Sprintf("operator %s needs bools known when the network is built, got run-time %s (conditions cannot depend on tensor values)",
			op, v.format(e.typeString)))
		return false, false
	}
	e.report(pos, fmt.Sprintf("operator %s needs bools, got %s", op, v.format(e.typeString)))
	return false, false
}

// compare folds a comparison of two elaboration-time values. Numbers compare
// by value (an int and a float compare as float64); bools, strings and
// tuples (elementwise; a kernel literal 3x3 is the tuple (3, 3)) support
// only == and !=. Tensors are run-time values and cannot be compared.
func (e *elab) compare(x *Binary, a, b value) value {
	if a.k == kTensor || b.k == kTensor {
		e.report(x.Pos, fmt.Sprintf("comparison %s needs values known when the network is built (ints, floats, bools, tuples), got %s and %s (conditions cannot depend on tensor values)",
			x.Op, a.format(e.typeString), b.format(e.typeString)))
		return poison
	}
	if a.isNum() && b.isNum() {
		var lt, eq bool
		if a.k == kInt && b.k == kInt {
			lt, eq = a.i < b.i, a.i == b.i
		} else {
			lt, eq = a.num() < b.num(), a.num() == b.num()
		}
		switch x.Op {
		case "==":
			return boolVal(eq)
		case "!=":
			return boolVal(!eq)
		case "<":
			return boolVal(lt)
		case "<=":
			return boolVal(lt || eq)
		case ">":
			return boolVal(!lt && !eq)
		case ">=":
			return boolVal(!lt)
		}
	}
	if (x.Op == "==" || x.Op == "!=") && a.k == b.k {
		eq := valuesEqual(a, b)
		return boolVal(eq == (x.Op == "=="))
	}
	hint := ""
	if a.k == kTuple && b.isNum() || a.isNum() && b.k == kTuple {
		hint = " (an int n as a window argument means (n, n): compare with the tuple, e.g. stride != (1, 1))"
	}
	e.report(x.Pos, fmt.Sprintf("comparison %s is not defined for %s and %s%s", x.Op,
		a.format(e.typeString), b.format(e.typeString), hint))
	return poison
}

// valuesEqual reports whether two non-tensor values of the same kind are
// equal; tuples compare elementwise (numbers by value).
func valuesEqual(a, b value) bool {
	switch {
	case a.isNum() && b.isNum():
		if a.k == kInt && b.k == kInt {
			return a.i == b.i
		}
		return a.num() == b.num()
	case a.k != b.k:
		return false
	case a.k == kBool:
		return a.b == b.b
	case a.k == kString:
		return a.s == b.s
	case a.k == kTuple:
		if len(a.elems) != len(b.elems) {
			return false
		}
		for i := range a.elems {
			if !valuesEqual(a.elems[i], b.elems[i]) {
				return false
			}
		}
		return true
	}
	return false
}

func (e *elab) negate(pos lexer.Position, v value, scope string) value {
	switch v.k {
	case kPoison:
		return poison
	case kInt:
		return intVal(-v.i)
	case kFloat:
		return floatVal(-v.f)
	case kTensor:
		return e.node(pos, ir.OpMul, scope, []int{v.node}, ir.Attrs{"c": -1.0})
	}
	e.report(pos, "cannot negate "+v.format(e.typeString))
	return poison
}

// binary applies + - * / : constant folding on numbers; tensor + tensor is
// an add node; number * tensor, tensor * number and tensor / number are mul
// nodes with the constant as attribute c.
func (e *elab) binary(x *Binary, a, b value, scope string) value {
	if a.isPoison() || b.isPoison() {
		return poison
	}
	switch x.Op {
	case "==", "!=", "<", "<=", ">", ">=":
		return e.compare(x, a, b)
	}
	if a.isNum() && b.isNum() {
		if x.Op == "/" && b.num() == 0 {
			e.report(x.Pos, "division by zero")
			return poison
		}
		if a.k == kInt && b.k == kInt && x.Op != "/" {
			switch x.Op {
			case "+":
				return intVal(a.i + b.i)
			case "-":
				return intVal(a.i - b.i)
			case "*":
				return intVal(a.i * b.i)
			}
		}
		var r float64
		switch x.Op {
		case "+":
			r = a.num() + b.num()
		case "-":
			r = a.num() - b.num()
		case "*":
			r = a.num() * b.num()
		case "/":
			r = a.num() / b.num()
		}
		if math.IsInf(r, 0) || math.IsNaN(r) {
			e.report(x.Pos, "arithmetic overflow")
			return poison
		}
		return floatVal(r)
	}
	if v, ok := e.tensorBinary(x, a, b, scope); ok {
		return v
	}
	switch {
	case x.Op == "+" && a.k == kTensor && b.k == kTensor:
		return e.node(x.Pos, ir.OpAdd, scope, []int{a.node, b.node}, nil)
	case x.Op == "*" && a.isNum() && b.k == kTensor:
		return e.node(x.Pos, ir.OpMul, scope, []int{b.node}, ir.Attrs{"c": a.num()})
	case x.Op == "*" && a.k == kTensor && b.isNum():
		return e.node(x.Pos, ir.OpMul, scope, []int{a.node}, ir.Attrs{"c": b.num()})
	case x.Op == "/" && a.k == kTensor && b.isNum():
		if b.num() == 0 {
			e.report(x.Pos, "division by zero")
			return poison
		}
		return e.node(x.Pos, ir.OpMul, scope, []int{a.node}, ir.Attrs{"c": 1 / b.num()})
	}
	e.report(x.Pos, fmt.Sprintf("operator %s is not defined for %s and %s (tensors support x + y, x - y, x * s with s [N, C, 1, 1], c * x, x * c and x / c)",
		x.Op, a.format(e.typeString), b.format(e.typeString)))
	return poison
}

// evalArgs evaluates a call's arguments in the current scope; outer is the
// scope path of the call itself (see nested).
func (e *elab) evalArgs(en *env, c *Call, outer string) []argVal {
	out := make([]argVal, len(c.Args))
	for i, a := range c.Args {
		out[i] = argVal{pos: a.Value.Position(), v: e.nested(en, a.Value, outer)}
	}
	return out
}

// apply calls c.Func (a builtin or block) with evaluated arguments, giving
// it the scope path scope.
func (e *elab) apply(en *env, c *Call, args []argVal, scope string) value {
	if e.aborted {
		return poison
	}
	if e.steps++; e.steps > e.lim.MaxSteps {
		e.abort(c.Pos, "elaboration takes more than %d steps", e.lim.MaxSteps)
		return poison
	}
	if b := builtins[c.Func]; b != nil {
		slots, rest, ok := bindArgs(e.dl, &b.sig, c)
		if !ok {
			return poison
		}
		bc := &bcall{e: e, name: c.Func, pos: c.Pos, scope: scope, args: make([]*argVal, len(slots))}
		for k, ai := range slots {
			if ai >= 0 {
				bc.args[k] = &args[ai]
			}
		}
		for _, ai := range rest {
			bc.rest = append(bc.rest, &args[ai])
		}
		saved, savedFn := e.anon, e.fn
		e.anon, e.fn = scope == en.scope, c.Func
		defer func() { e.anon, e.fn = saved, savedFn }()
		return b.fn(bc)
	}
	ref := en.u.blocks[c.Func]
	if ref == nil {
		lookupSig(e.dl, en.u, c) // reports the unknown name
		return poison
	}
	return e.callBlock(ref, c, args, scope)
}

func (e *elab) callBlock(ref *blockRef, c *Call, args []argVal, scope string) value {
	for _, f := range e.stack {
		if f.b == ref.b {
			return poison // recursion, reported by checkRecursion
		}
	}
	if len(e.stack) >= maxCallDepth {
		e.report(c.Pos, fmt.Sprintf("block calls nested deeper than %d", maxCallDepth))
		return poison
	}
	slots, _, ok := bindArgs(e.dl, blockSig(ref.b), c)
	if !ok {
		return poison
	}
	e.stack = append(e.stack, frame{b: ref.b, call: c.Pos})
	defer func() { e.stack = e.stack[:len(e.stack)-1] }()
	en := &env{u: ref.u, vars: map[string]value{}, scope: scope}
	for k, p := range ref.b.Params {
		switch {
		case slots[k] >= 0:
			en.vars[p.Name] = args[slots[k]].v
		case p.Default != nil:
			en.vars[p.Name] = e.eval(en, p.Default, scope, false)
		}
	}
	v, _, _ := e.body(en, ref.b.Body)
	return v
}

// seq evaluates the items of s in order; item i gets the scope path
// scope.i and `_` = item i-1's value. A repeat at the root of an item
// expands into as many consecutive items as it has iterations.
func (e *elab) seq(en *env, s *Seq, scope string, mark bool) value {
	if len(s.Items) == 0 {
		e.report(s.Pos, "empty seq")
		return poison
	}
	var prev value
	idx := 0
	for k, it := range s.Items {
		ie := &env{u: en.u, vars: en.vars, scope: en.scope, inSeq: true, network: en.network, skipped: en.skipped}
		if k > 0 {
			p := prev
			ie.prev = &p
		}
		if r, ok := it.(*Repeat); ok {
			v, n := e.repeat(ie, r, scope, idx, mark)
			prev, idx = v, idx+n
			continue
		}
		child := join(scope, strconv.Itoa(idx))
		idx++
		prev = e.eval(ie, it, child, false)
		if mark && prev.k == kTensor {
			e.g.SetMark(child, prev.node)
		}
	}
	return prev
}

// repeat elaborates r.Call count times with scope paths scope.start …
// scope.start+count-1; iteration i > 0 gets iteration i-1's result as its
// first positional argument. The other arguments are evaluated once. It
// returns the last result and the number of iterations.
func (e *elab) repeat(en *env, r *Repeat, scope string, start int, mark bool) (value, int) {
	cv := e.eval(en, r.Count, en.scope, false)
	if cv.isPoison() {
		return poison, 0
	}
	n, ok := toInt(cv)
	switch {
	case !ok:
		e.report(r.Count.Position(), "repeat count must be an int, got "+cv.format(e.typeString))
		return poison, 0
	case n < 1:
		e.report(r.Count.Position(), fmt.Sprintf("repeat count must be positive, got %d", n))
		return poison, 0
	case n > e.lim.MaxRepeat:
		e.report(r.Count.Position(), fmt.Sprintf("repeat count %d exceeds the limit %d", n, e.lim.MaxRepeat))
		return poison, 0
	}
	args := e.evalArgs(en, r.Call, scope)
	first := -1
	for i, a := range r.Call.Args {
		if a.Name == "" {
			first = i
			break
		}
	}
	if first < 0 {
		e.report(r.Pos, fmt.Sprintf("repeat: %s needs a positional first argument to chain the iterations through", r.Call.Func))
		return poison, 0
	}
	var v value
	for i := 0; i < n && !e.aborted; i++ {
		child := join(scope, strconv.Itoa(start+i))
		v = e.apply(en, r.Call, args, child)
		if mark && v.k == kTensor {
			e.g.SetMark(child, v.node)
		}
		args[first].v = v
	}
	return v, n
}
