// Package dsl implements Kiln's network description language (.kiln files):
// a parser (participle) and an elaborator that turns a network into an
// ir.Graph whose parameter names are the PyTorch/timm checkpoint keys. The
// language is documented in docs/DSL.md.
//
// A source file holds imports, blocks and at most one network:
//
//	import "blocks.kiln"
//
//	block conv_bn(x, out, k, stride=1, pad=0) {
//	    conv = conv2d(x, out, kernel=k, stride=stride, pad=pad, bias=false)
//	    bn = batchnorm(conv, eps=0.001)
//	    return relu(bn)
//	}
//
//	network net(image: f32[N, 3, 32, 32]) -> f32[N, 10] {
//	    features = seq { conv_bn(image, 16, 3); repeat 2 conv_bn(_, 16, 3, pad=1) }
//	    fc = dense(flatten(global_avgpool(features)), 10)
//	    return fc
//	}
//
// Pipeline (LoadFile, Load, Elaborate):
//
//  1. ParseFile tokenizes the source, splits the tokens before every
//     block/network/import keyword and parses each declaration on its own,
//     so syntax errors in different declarations are all reported.
//  2. Imports are loaded (each file once; beside the importing file, else in
//     the library FS, by default the built-in archs.FS). An import brings in
//     every block visible in the imported file, transitively.
//  3. Every block of every file is checked statically: parameters, returns,
//     undefined variables, `_`, unknown functions, call arity and keywords,
//     recursion (cycles in the block call graph).
//  4. The network is elaborated by evaluating its body: block calls bind
//     arguments and run their bodies; primitive calls append param nodes
//     and then their op node with ir.Graph.Add, which infers shapes. Errors
//     are reported at the call and produce a poison value that suppresses
//     follow-on errors, so elaboration goes on and reports every independent
//     problem. Comparisons, not/and/or, `A if C else B` and if statements
//     are folded here: conditions are values known at elaboration time, and
//     only the chosen branch creates nodes and parameters.
//
// Naming: an assignment `name = expr` gives the outermost call of expr the
// scope path <scope>.name; nested and unassigned calls keep the current
// scope (a parameter-creating call nested in an assigned expression is
// legal but warned about, since its parameters are not named under the
// assigned name); `seq` items and `repeat` iterations are numbered children. A
// primitive that creates parameters names them <scope>.weight etc. Every
// node gets Name = its scope path (params: the full key) and Pos = the
// source position of the call or operator that made it. Values assigned at
// network level, and their numbered children, are recorded as graph marks.
//
// All errors are returned as Diagnostics, sorted by position, each printed as
// file:line:col: message, the source line and a caret. Warnings (Severity
// SeverityWarning) go to Options.Warn when the load succeeds.
package dsl
