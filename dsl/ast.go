package dsl

import "github.com/alecthomas/participle/v2/lexer"

// File is a parsed .kiln source file.
type File struct {
	// Name is the file name used in positions and for resolving imports.
	Name string
	// Src is the source text (kept for diagnostics).
	Src     []byte
	Imports []*Import
	// Blocks are the block declarations in source order.
	Blocks []*Block
	// Network is the file's network declaration, or nil for a library file.
	Network *Block

	// broken names the blocks whose declaration had syntax errors; calls to
	// them are not reported again. brokenNetwork: the network had errors.
	broken        map[string]bool
	brokenNetwork bool
}

// Import is `import "path"`.
type Import struct {
	Pos  lexer.Position
	Path string
}

// Block is a block or network declaration. For a network, parameters with a
// Type are the network inputs and Result is the optional declared output type.
type Block struct {
	Pos     lexer.Position
	Network bool
	Name    string
	Params  []*Param
	Result  *TensorType
	Body    []Stmt
	// End is the position of the closing brace.
	End lexer.Position
}

// Param is a block parameter `name`, `name = default` or a network input
// `name: f32[N, 3, 299, 299]`.
type Param struct {
	Pos     lexer.Position
	Name    string
	Type    *TensorType
	Default Expr
}

// TensorType is a declared tensor type such as f32[N, 3, 299, 299].
type TensorType struct {
	Pos   lexer.Position
	DType string
	Dims  []*Dim
}

// Dim is one dimension of a TensorType: a size, or a symbol (only N, the batch).
type Dim struct {
	Pos  lexer.Position
	Name string // symbolic dimension, or ""
	Size int
}

// Stmt is a statement: *Assign, *Return, *ExprStmt or *If.
type Stmt interface{ stmtPos() lexer.Position }

// Assign is `name = value`.
type Assign struct {
	Pos   lexer.Position
	Name  string
	Value Expr
}

// Return is `return value`.
type Return struct {
	Pos   lexer.Position
	Value Expr
}

// ExprStmt is an expression evaluated for its effect (an unassigned call).
type ExprStmt struct {
	Pos lexer.Position
	X   Expr
}

// If is `if Cond { Then } else { Else }`; `else if` is an Else holding one
// *If. Cond must be a compile-time bool; only the chosen branch is
// elaborated. The branches share the enclosing body's variables and scope
// path (an if creates no scope of its own).
type If struct {
	Pos  lexer.Position
	Cond Expr
	Then []Stmt
	Else []Stmt
	// ThenEnd and ElseEnd are the positions of the branches' closing braces.
	ThenEnd, ElseEnd lexer.Position
}

func (s *If) stmtPos() lexer.Position       { return s.Pos }
func (s *Assign) stmtPos() lexer.Position   { return s.Pos }
func (s *Return) stmtPos() lexer.Position   { return s.Pos }
func (s *ExprStmt) stmtPos() lexer.Position { return s.Pos }

// Expr is an expression node. Every node records the position of its first
// token (for operators: of the operator).
type Expr interface{ Position() lexer.Position }

// Ident is a variable reference.
type Ident struct {
	Pos  lexer.Position
	Name string
}

// Placeholder is `_`, the previous item's result inside a seq.
type Placeholder struct{ Pos lexer.Position }

// Number is an integer or floating-point literal.
type Number struct {
	Pos   lexer.Position
	IsInt bool
	Int   int
	Float float64
}

// Bool is `true` or `false`.
type Bool struct {
	Pos   lexer.Position
	Value bool
}

// String is a string literal.
type String struct {
	Pos   lexer.Position
	Value string
}

// KernelLit is a kernel size literal `KHxKW` such as 1x7.
type KernelLit struct {
	Pos  lexer.Position
	H, W int
}

// Tuple is `(a, b, ...)`.
type Tuple struct {
	Pos   lexer.Position
	Elems []Expr
}

// Unary is `-x` or `not x`.
type Unary struct {
	Pos lexer.Position
	Op  string
	X   Expr
}

// Binary is `x op y` for op in + - * /, the comparisons == != < <= > >=,
// and the boolean `and` and `or` (which evaluate y only when needed).
type Binary struct {
	Pos  lexer.Position
	Op   string
	X, Y Expr
}

// Cond is `Then if Cond else Else`.
type Cond struct {
	Pos              lexer.Position
	Then, Cond, Else Expr
}

// Call is `fn(args)`, a builtin or block call.
type Call struct {
	Pos  lexer.Position
	Func string
	Args []*Arg
}

// Arg is one call argument; Name is "" for a positional argument.
type Arg struct {
	Pos   lexer.Position
	Name  string
	Value Expr
}

// Seq is `seq { item; item ... }`.
type Seq struct {
	Pos   lexer.Position
	Items []Expr
}

// Repeat is `repeat K call(...)`.
type Repeat struct {
	Pos   lexer.Position
	Count Expr
	Call  *Call
}

// Position returns the node's position.
func (e *Ident) Position() lexer.Position { return e.Pos }

// Position returns the node's position.
func (e *Placeholder) Position() lexer.Position { return e.Pos }

// Position returns the node's position.
func (e *Number) Position() lexer.Position { return e.Pos }

// Position returns the node's position.
func (e *Bool) Position() lexer.Position { return e.Pos }

// Position returns the node's position.
func (e *String) Position() lexer.Position { return e.Pos }

// Position returns the node's position.
func (e *KernelLit) Position() lexer.Position { return e.Pos }

// Position returns the node's position.
func (e *Tuple) Position() lexer.Position { return e.Pos }

// Position returns the node's position.
func (e *Unary) Position() lexer.Position { return e.Pos }

// Position returns the operator's position.
func (e *Binary) Position() lexer.Position { return e.Pos }

// Position returns the node's position.
func (e *Cond) Position() lexer.Position { return e.Pos }

// Position returns the node's position.
func (e *Call) Position() lexer.Position { return e.Pos }

// Position returns the node's position.
func (e *Seq) Position() lexer.Position { return e.Pos }

// Position returns the node's position.
func (e *Repeat) Position() lexer.Position { return e.Pos }
