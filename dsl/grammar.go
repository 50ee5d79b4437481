package dsl

import (
	"github.com/alecthomas/participle/v2"
	"github.com/alecthomas/participle/v2/lexer"
)

// lexDef tokenizes .kiln sources. Comments and spaces are dropped by
// tokenize; NL tokens are statement separators (see tokenize for when a
// newline is ignored). Invalid and BadString exist so that lexing never fails:
// tokenize reports them and goes on.
var lexDef = lexer.MustSimple([]lexer.SimpleRule{
	{Name: "Comment", Pattern: `#[^\n]*`},
	{Name: "NL", Pattern: `\n`},
	{Name: "Space", Pattern: `[ \t\r\f\v]+`},
	{Name: "String", Pattern: `"(?:[^"\\\n]|\\.)*"`},
	{Name: "BadString", Pattern: `"(?:[^"\\\n]|\\.)*`},
	{Name: "Kernel", Pattern: `[0-9]+x[0-9]+`},
	{Name: "Number", Pattern: `(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?`},
	{Name: "Keyword", Pattern: `(?:block|network|import|return|seq|if|else|true|false|and|or|not)\b`},
	{Name: "Ident", Pattern: `[A-Za-z_][A-Za-z0-9_]*`},
	{Name: "Punct", Pattern: `->|==|!=|<=|>=|[-+*/=<>(),;:\[\]{}]`},
	{Name: "Invalid", Pattern: `.`},
})

var tokType = lexDef.Symbols()

// The grammar structs below are participle's view of one top-level
// declaration; parse.go converts them to the exported AST.

type gDecl struct {
	Import *gImport `parser:"  @@"`
	Block  *gBlock  `parser:"| @@"`
}

type gImport struct {
	Pos  lexer.Position
	Path string `parser:"'import' @String"`
}

type gBlock struct {
	Pos    lexer.Position
	Kind   string    `parser:"@('block' | 'network')"`
	Name   *gName    `parser:"@@"`
	Params []*gParam `parser:"'(' ( @@ ( (?! ',' ')') ',' @@ )* ','? )? ')'"`
	Result *gType    `parser:"( '->' @@ )?"`
	Body   *gBody    `parser:"@@"`
}

type gName struct {
	Pos   lexer.Position
	Value string `parser:"@Ident"`
}

type gParam struct {
	Pos     lexer.Position
	Name    string `parser:"@Ident"`
	Type    *gType `parser:"( ':' @@ )?"`
	Default *gExpr `parser:"( '=' @@ )?"`
}

type gType struct {
	Pos   lexer.Position
	DType string  `parser:"@Ident"`
	Dims  []*gDim `parser:"'[' ( @@ ( (?! ',' ']') ',' @@ )* ','? )? ']'"`
}

type gDim struct {
	Pos  lexer.Position
	Name *string `parser:"  @Ident"`
	Size *string `parser:"| @Number"`
}

type gBody struct {
	Stmts []*gStmt `parser:"'{' ( NL | ';' )* ( @@ ( ( NL | ';' )+ @@? )* )?"`
	Close *gClose  `parser:"@@"`
}

type gClose struct {
	Pos   lexer.Position
	Brace string `parser:"@'}'"`
}

type gStmt struct {
	Pos    lexer.Position
	If     *gIf    `parser:"  @@"`
	Return *gExpr  `parser:"| 'return' @@"`
	Name   *string `parser:"| (?= Ident '=') @Ident '='"`
	Value  *gExpr  `parser:"  @@"`
	Expr   *gExpr  `parser:"| @@"`
}

// gIf is the statement `if COND { ... } [ else { ... } | else if ... ]`.
type gIf struct {
	Pos    lexer.Position
	Cond   *gExpr `parser:"'if' @@"`
	Then   *gBody `parser:"@@"`
	ElseIf *gIf   `parser:"( 'else' ( @@"`
	Else   *gBody `parser:"         | @@ ) )?"`
}

type gExpr struct {
	Pos  lexer.Position
	Then *gOr   `parser:"@@"`
	Cond *gOr   `parser:"( 'if' @@"`
	Else *gExpr `parser:"  'else' @@ )?"`
}

type gOr struct {
	Left *gAnd    `parser:"@@"`
	Rest []*gOrOp `parser:"@@*"`
}

type gOrOp struct {
	Pos   lexer.Position
	Op    string `parser:"@'or'"`
	Right *gAnd  `parser:"@@"`
}

type gAnd struct {
	Left *gNot     `parser:"@@"`
	Rest []*gAndOp `parser:"@@*"`
}

type gAndOp struct {
	Pos   lexer.Position
	Op    string `parser:"@'and'"`
	Right *gNot  `parser:"@@"`
}

type gNot struct {
	Pos lexer.Position
	Not []string `parser:"@'not'*"`
	X   *gCmp    `parser:"@@"`
}

// gCmp is at most one comparison: comparisons do not chain (a < b < c is a
// syntax error rather than Python's a < b and b < c).
type gCmp struct {
	Left *gSum   `parser:"@@"`
	Op   *gCmpOp `parser:"@@?"`
}

type gCmpOp struct {
	Pos   lexer.Position
	Op    string `parser:"@('==' | '!=' | '<=' | '>=' | '<' | '>')"`
	Right *gSum  `parser:"@@"`
}

type gSum struct {
	Left *gProd    `parser:"@@"`
	Rest []*gSumOp `parser:"@@*"`
}

type gSumOp struct {
	Pos   lexer.Position
	Op    string `parser:"@('+' | '-')"`
	Right *gProd `parser:"@@"`
}

type gProd struct {
	Left *gUnary    `parser:"@@"`
	Rest []*gProdOp `parser:"@@*"`
}

type gProdOp struct {
	Pos   lexer.Position
	Op    string  `parser:"@('*' | '/')"`
	Right *gUnary `parser:"@@"`
}

type gUnary struct {
	Pos lexer.Position
	Neg []string  `parser:"@'-'*"`
	X   *gPrimary `parser:"@@"`
}

type gPrimary struct {
	Pos    lexer.Position
	Seq    *gSeq    `parser:"  @@"`
	Repeat *gRepeat `parser:"| @@"`
	Call   *gCall   `parser:"| @@"`
	Kernel *string  `parser:"| @Kernel"`
	Number *string  `parser:"| @Number"`
	Bool   *string  `parser:"| @('true' | 'false')"`
	String *string  `parser:"| @String"`
	Ident  *string  `parser:"| @Ident"`
	Paren  *gParen  `parser:"| @@"`
}

type gSeq struct {
	Pos   lexer.Position
	Items []*gExpr `parser:"'seq' '{' ( NL | ';' )* ( @@ ( ( NL | ';' )+ @@? )* )? '}'"`
}

type gRepeat struct {
	Pos   lexer.Position
	Count *gCount `parser:"(?= 'repeat' ( Number | Ident ) ) 'repeat' @@"`
	Call  *gCall  `parser:"@@"`
}

type gCount struct {
	Pos    lexer.Position
	Number *string `parser:"  @Number"`
	Ident  *string `parser:"| @Ident"`
}

type gCall struct {
	Pos  lexer.Position
	Func string  `parser:"(?= Ident '(') @Ident '('"`
	Args []*gArg `parser:"( @@ ( (?! ',' ')') ',' @@ )* ','? )? ')'"`
}

type gArg struct {
	Pos   lexer.Position
	Name  *string `parser:"( (?= Ident '=') @Ident '=' )?"`
	Value *gExpr  `parser:"@@"`
}

type gParen struct {
	Pos   lexer.Position
	Elems []*gExpr `parser:"'(' @@ ( (?! ',' ')') ',' @@ )*"`
	Comma *string  `parser:"@','? ')'"`
}

var declParser = participle.MustBuild[gDecl](
	participle.Lexer(lexDef),
	participle.UseLookahead(0),
)
