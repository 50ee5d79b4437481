package dsl

import (
	"fmt"
	"strings"

	"github.com/alecthomas/participle/v2/lexer"
)

// Static checks run on every block of every loaded file, used or not, before
// elaboration: parameter lists, return statements, undefined variables,
// misuse of `_`, unknown functions, call arity and keywords, and recursion.
// Elaboration repeats some of these checks on the paths it takes; the
// diagnostic list drops the identical duplicates.

// checkUnit checks the declarations of one file.
func checkUnit(dl *diagList, u *unit) {
	for _, b := range u.file.Blocks {
		checkBlock(dl, u, b)
	}
	if n := u.file.Network; n != nil {
		checkBlock(dl, u, n)
	}
}

// scopeCtx describes where an expression sits, for `_`.
type scopeCtx struct {
	inSeq   bool // inside a seq item
	hasPrev bool // ... that is not the first item
}

func checkBlock(dl *diagList, u *unit, b *Block) {
	what := "block"
	if b.Network {
		what = "network"
	}
	defined := map[string]bool{}
	seenDefault := false
	inputs := 0
	for _, p := range b.Params {
		switch {
		case p.Name == "_":
			dl.errorf(p.Pos, "_ cannot be a parameter name")
		case defined[p.Name]:
			dl.errorf(p.Pos, "duplicate parameter %s", p.Name)
		}
		if p.Default != nil {
			checkExpr(dl, u, p.Default, defined, scopeCtx{})
			seenDefault = true
		} else if seenDefault && p.Type == nil {
			dl.errorf(p.Pos, "parameter %s without a default follows a parameter with a default", p.Name)
		}
		if p.Type != nil {
			inputs++
			if !b.Network {
				dl.errorf(p.Type.Pos, "block parameters have no type; only network inputs are declared as tensors")
			} else if p.Default != nil {
				dl.errorf(p.Default.Position(), "network input %s cannot have a default", p.Name)
			}
		} else if b.Network && p.Default == nil {
			dl.errorf(p.Pos, "network parameter %s needs a tensor type (input: f32[N, C, H, W]) or a default value", p.Name)
		}
		defined[p.Name] = true
	}
	if b.Network && inputs == 0 {
		dl.errorf(b.Pos, "network %s has no input (declare one as name: f32[N, C, H, W])", b.Name)
	}
	if b.Result != nil && !b.Network {
		dl.errorf(b.Result.Pos, "only a network declares a result type")
	}
	if !checkStmts(dl, u, b.Body, defined) {
		dl.errorf(b.End, "%s %s has no return statement", what, b.Name)
	}
}

// checkStmts checks a statement list and reports whether it always returns
// (it ends with a return, or with an if whose branches both always return).
// Names assigned are added to defined; after an if, a name assigned in either
// branch counts as defined (elaboration reports the use of one the taken
// branch did not assign).
func checkStmts(dl *diagList, u *unit, stmts []Stmt, defined map[string]bool) bool {
	returned := false
	for _, s := range stmts {
		if returned {
			dl.errorf(s.stmtPos(), "unreachable statement after return")
			break
		}
		switch s := s.(type) {
		case *Assign:
			checkExpr(dl, u, s.Value, defined, scopeCtx{})
			if s.Name == "_" {
				dl.errorf(s.Pos, "cannot assign to _")
			}
			defined[s.Name] = true
		case *Return:
			checkExpr(dl, u, s.Value, defined, scopeCtx{})
			returned = true
		case *ExprStmt:
			checkExpr(dl, u, s.X, defined, scopeCtx{})
		case *If:
			checkExpr(dl, u, s.Cond, defined, scopeCtx{})
			thenDef, elseDef := copySet(defined), copySet(defined)
			r1 := checkStmts(dl, u, s.Then, thenDef)
			r2 := checkStmts(dl, u, s.Else, elseDef)
			for n := range thenDef {
				defined[n] = true
			}
			for n := range elseDef {
				defined[n] = true
			}
			returned = r1 && r2 && s.Else != nil
		}
	}
	return returned
}

func copySet(m map[string]bool) map[string]bool {
	out := make(map[string]bool, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// checkExpr walks x; defined holds the variables assigned so far.
func checkExpr(dl *diagList, u *unit, x Expr, defined map[string]bool, sc scopeCtx) {
	switch x := x.(type) {
	case *Ident:
		if !defined[x.Name] {
			dl.errorf(x.Pos, "%s", undefinedMsg(u, x.Name, keysOf(defined)))
		}
	case *Placeholder:
		if msg := placeholderMsg(sc.inSeq, sc.hasPrev); msg != "" {
			dl.errorf(x.Pos, "%s", msg)
		}
	case *Tuple:
		for _, e := range x.Elems {
			checkExpr(dl, u, e, defined, sc)
		}
	case *Unary:
		checkExpr(dl, u, x.X, defined, sc)
	case *Binary:
		checkExpr(dl, u, x.X, defined, sc)
		checkExpr(dl, u, x.Y, defined, sc)
	case *Cond:
		checkExpr(dl, u, x.Cond, defined, sc)
		checkExpr(dl, u, x.Then, defined, sc)
		checkExpr(dl, u, x.Else, defined, sc)
	case *Call:
		checkCall(dl, u, x, defined, sc)
	case *Repeat:
		checkExpr(dl, u, x.Count, defined, sc)
		checkCall(dl, u, x.Call, defined, sc)
		if !hasPositional(x.Call) {
			dl.errorf(x.Pos, "repeat: %s needs a positional first argument to chain the iterations through", x.Call.Func)
		}
	case *Seq:
		if len(x.Items) == 0 {
			dl.errorf(x.Pos, "empty seq")
		}
		for i, it := range x.Items {
			checkExpr(dl, u, it, defined, scopeCtx{inSeq: true, hasPrev: i > 0})
		}
	}
}

func hasPositional(c *Call) bool {
	for _, a := range c.Args {
		if a.Name == "" {
			return true
		}
	}
	return false
}

func placeholderMsg(inSeq, hasPrev bool) string {
	switch {
	case !inSeq:
		return "_ used outside a seq (it stands for the previous seq item)"
	case !hasPrev:
		return "_ in the first item of a seq, which has no previous item"
	}
	return ""
}

func checkCall(dl *diagList, u *unit, c *Call, defined map[string]bool, sc scopeCtx) {
	for _, a := range c.Args {
		checkExpr(dl, u, a.Value, defined, sc)
	}
	s, ok := lookupSig(dl, u, c)
	if ok {
		bindArgs(dl, s, c)
	}
}

// lookupSig resolves c.Func to a builtin or block signature, reporting an
// unknown name. ok is false for unknown names and for blocks whose
// declaration had syntax errors.
func lookupSig(dl *diagList, u *unit, c *Call) (*sig, bool) {
	if b := builtins[c.Func]; b != nil {
		return &b.sig, true
	}
	if ref := u.blocks[c.Func]; ref != nil {
		return blockSig(ref.b), true
	}
	if u.isBroken(c.Func) {
		return nil, false
	}
	msg := "unknown function " + c.Func
	if u.suggestBudget() {
		if s := suggest(c.Func, u.functionNames()); s != "" {
			msg += " (did you mean " + s + "?)"
		}
	}
	dl.errorf(c.Pos, "%s", msg)
	return nil, false
}

func blockSig(b *Block) *sig {
	s := &sig{name: b.Name}
	for _, p := range b.Params {
		s.params = append(s.params, sigParam{name: p.Name, required: p.Default == nil})
	}
	return s
}

// bindArgs matches the call's arguments to the signature's parameters:
// positional ones in order, then keywords by name. It returns for each
// parameter the index of its argument (-1 if absent) and the indices of the
// variadic arguments; ok is false after any error (all are reported).
func bindArgs(dl *diagList, s *sig, c *Call) (slots, rest []int, ok bool) {
	ok = true
	slots = make([]int, len(s.params))
	for i := range slots {
		slots[i] = -1
	}
	npos, seenKw := 0, false
	for ai, a := range c.Args {
		if a.Name == "" {
			switch {
			case seenKw:
				dl.errorf(a.Pos, "positional argument after keyword argument in call to %s", s.name)
				ok = false
			case s.variadic:
				rest = append(rest, ai)
			case npos >= len(s.params):
				if npos == len(s.params) {
					dl.errorf(a.Pos, "too many arguments in call to %s: it takes %d (%s), got %d",
						s.name, len(s.params), s.paramList(), countPositional(c))
				}
				ok = false
				npos++
			default:
				slots[npos] = ai
				npos++
			}
			continue
		}
		seenKw = true
		k := s.index(a.Name)
		switch {
		case k < 0:
			dl.errorf(a.Pos, "%s has no parameter %s (parameters: %s)", s.name, a.Name, s.paramList())
			ok = false
		case slots[k] >= 0:
			dl.errorf(a.Pos, "argument %s given twice in call to %s", a.Name, s.name)
			ok = false
		default:
			slots[k] = ai
		}
	}
	if !ok {
		return slots, rest, false // a missing argument would only repeat the error
	}
	var missing []string
	for k, p := range s.params {
		if p.required && slots[k] < 0 {
			missing = append(missing, p.name)
		}
	}
	if len(missing) > 0 {
		plural := ""
		if len(missing) > 1 {
			plural = "s"
		}
		dl.errorf(c.Pos, "missing argument%s %s in call to %s(%s)", plural, strings.Join(missing, ", "), s.name, s.paramList())
		ok = false
	}
	if s.variadic && len(rest) == 0 {
		dl.errorf(c.Pos, "%s needs at least one operand", s.name)
		ok = false
	}
	return slots, rest, ok
}

func countPositional(c *Call) int {
	n := 0
	for _, a := range c.Args {
		if a.Name == "" {
			n++
		}
	}
	return n
}

func (s *sig) paramList() string {
	var parts []string
	if s.variadic {
		parts = append(parts, "operands...")
	}
	for _, p := range s.params {
		parts = append(parts, p.name)
	}
	return strings.Join(parts, ", ")
}

func (u *unit) isBroken(name string) bool { return u.broken[name] }

func (u *unit) functionNames() []string {
	var names []string
	for n := range builtins {
		names = append(names, n)
	}
	for n := range u.blocks {
		names = append(names, n)
	}
	return names
}

// undefinedMsg is the message for a use of the undefined variable name;
// scope lists the names defined there (called only when a suggestion is
// computed). The message is computed once per name and file and reused, so
// the static check and elaboration report the same text (which diagList
// then deduplicates) and the cost stays linear in the number of uses.
func undefinedMsg(u *unit, name string, scope func() []string) string {
	if builtins[name] != nil || u.blocks[name] != nil {
		return fmt.Sprintf("undefined: %s (%s is a function; call it)", name, name)
	}
	if msg, ok := u.undefined[name]; ok {
		return msg
	}
	msg := "undefined: " + name
	if u.suggestBudget() {
		if s := suggest(name, scope()); s != "" {
			msg += " (did you mean " + s + "?)"
		}
	}
	if u.undefined == nil {
		u.undefined = map[string]string{}
	}
	u.undefined[name] = msg
	return msg
}

// keysOf returns the keys of a set, in no particular order.
func keysOf[V any](m map[string]V) func() []string {
	return func() []string {
		names := make([]string, 0, len(m))
		for n := range m {
			names = append(names, n)
		}
		return names
	}
}

// maxSuggestions bounds the "did you mean" suggestions computed per source
// file. Each costs a pass over every name in scope, so without a bound a
// file of n undefined names among n defined ones took O(n²) edit distances
// (20,000 names: minutes); past the bound the message names the undefined
// variable only and the diagnostics stay linear in the file's size.
const maxSuggestions = 32

// suggestBudget reports whether another suggestion may be computed for u,
// counting it.
func (u *unit) suggestBudget() bool {
	u.suggestions++
	return u.suggestions <= maxSuggestions
}

// suggest returns the candidate closest to name by edit distance, if it is
// close enough to be a likely typo; among equally close ones the first in
// lexical order (so the result does not depend on the order of cands).
// Candidates whose length differs by more than the best distance so far are
// skipped without computing theirs, which is at least the length difference.
func suggest(name string, cands []string) string {
	best, bestD := "", 3
	if len(name) <= 3 {
		bestD = 2
	}
	for _, c := range cands {
		if diff := len(c) - len(name); diff > bestD || -diff > bestD {
			continue
		}
		if d := editDistance(name, c); d < bestD || (d == bestD && best != "" && c < best) {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 30
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// checkRecursion reports every cycle in the block call graph of all loaded
// files. Algorithm: depth-first search with white/grey/black colouring over
// blocks (edges: calls in a block's body and parameter defaults that resolve
// to blocks in the block's own file scope); an edge to a grey block closes a
// cycle, which is reported at that call with the chain of block names.
func checkRecursion(dl *diagList, units []*unit) {
	const (
		white = iota
		grey
		black
	)
	color := map[*Block]int{}
	type edge struct {
		to  *blockRef
		pos lexer.Position
	}
	edgesOf := func(ref *blockRef) []edge {
		var out []edge
		var walk func(x Expr)
		walk = func(x Expr) {
			switch x := x.(type) {
			case *Tuple:
				for _, e := range x.Elems {
					walk(e)
				}
			case *Unary:
				walk(x.X)
			case *Binary:
				walk(x.X)
				walk(x.Y)
			case *Cond:
				walk(x.Cond)
				walk(x.Then)
				walk(x.Else)
			case *Seq:
				for _, e := range x.Items {
					walk(e)
				}
			case *Repeat:
				walk(x.Count)
				walk(x.Call)
			case *Call:
				for _, a := range x.Args {
					walk(a.Value)
				}
				if to := ref.u.blocks[x.Func]; to != nil && builtins[x.Func] == nil {
					out = append(out, edge{to, x.Pos})
				}
			}
		}
		for _, p := range ref.b.Params {
			if p.Default != nil {
				walk(p.Default)
			}
		}
		var walkStmts func(stmts []Stmt)
		walkStmts = func(stmts []Stmt) {
			for _, s := range stmts {
				switch s := s.(type) {
				case *Assign:
					walk(s.Value)
				case *Return:
					walk(s.Value)
				case *ExprStmt:
					walk(s.X)
				case *If:
					walk(s.Cond)
					walkStmts(s.Then)
					walkStmts(s.Else)
				}
			}
		}
		walkStmts(ref.b.Body)
		return out
	}
	var stack []*Block
	var visit func(ref *blockRef)
	visit = func(ref *blockRef) {
		color[ref.b] = grey
		stack = append(stack, ref.b)
		for _, e := range edgesOf(ref) {
			switch color[e.to.b] {
			case white:
				visit(e.to)
			case grey:
				var chain []string
				for i := len(stack) - 1; i >= 0; i-- {
					chain = append([]string{stack[i].Name}, chain...)
					if stack[i] == e.to.b {
						break
					}
				}
				chain = append(chain, e.to.b.Name)
				dl.errorf(e.pos, "recursive block call: %s", strings.Join(chain, " -> "))
			}
		}
		stack = stack[:len(stack)-1]
		color[ref.b] = black
	}
	for _, u := range units {
		for _, b := range u.file.Blocks {
			if ref := u.blocks[b.Name]; ref != nil && ref.b == b && color[b] == white {
				visit(ref)
			}
		}
	}
}
