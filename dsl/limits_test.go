package dsl

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestExpressionOperatorLimit: a long chain of operators (issue 11: a 0.9 MB
// `1+1+…` overflowed the Go stack in elaboration) is refused at the first
// operator over maxOperators, with its position, for every operator kind.
func TestExpressionOperatorLimit(t *testing.T) {
	n := maxOperators + 10
	for _, tc := range []struct{ name, expr string }{
		{"sum", strings.Repeat("1+", n) + "1"},
		{"product", strings.Repeat("2*", n) + "1"},
		{"negation", strings.Repeat("-", n) + "1"},
		{"or", strings.Repeat("true or ", n) + "true"},
		{"in parentheses", "(" + strings.Repeat("1-", n) + "1)"},
		{"in call arguments", "max(" + strings.Repeat("1+", n/2) + "1, " + strings.Repeat("1+", n/2) + "1)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "network n(image: f32[1, 3, 8, 8]) {\n    x = " + tc.expr + "\n    return image\n}\n"
			_, err := Load("deep.kiln", []byte(src), Options{})
			if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("expression has more than %d operators", maxOperators)) {
				t.Fatalf("err = %.300v, want the operator limit", err)
			}
			if !strings.HasPrefix(err.Error(), "deep.kiln:2:") {
				t.Errorf("err = %.200v, want it positioned on line 2", err)
			}
		})
	}
	// At the limit an expression is fine.
	src := "network n(image: f32[1, 3, 8, 8]) {\n    x = " + strings.Repeat("1+", maxOperators) + "1\n    return image\n}\n"
	if _, err := Load("ok.kiln", []byte(src), Options{}); err != nil {
		t.Errorf("%d operators: %.300v", maxOperators, err)
	}
}

// TestUndefinedDiagnosticsLinear: n undefined names among n defined ones
// (issue 11: 20,000 names took 172 s, quadratic "did you mean" searches and
// a scan from the file's start for each diagnostic's line) give n
// diagnostics, at most maxSuggestions of them with a suggestion, in time
// linear in n.
func TestUndefinedDiagnosticsLinear(t *testing.T) {
	const n = 3000
	var b strings.Builder
	b.WriteString("network n(image: f32[1, 3, 8, 8]) {\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "    a%d = image\n", i)
	}
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "    b%d = u%d\n", i, i)
	}
	b.WriteString("    return image\n}\n")
	t0 := time.Now()
	_, err := Load("undef.kiln", []byte(b.String()), Options{})
	took := time.Since(t0)
	ds, ok := err.(Diagnostics)
	if !ok {
		t.Fatalf("err = %.300v, want Diagnostics", err)
	}
	if len(ds) != n {
		t.Errorf("%d diagnostics, want %d", len(ds), n)
	}
	sugg := 0
	for _, d := range ds {
		if strings.Contains(d.Msg, "did you mean") {
			sugg++
		}
	}
	if sugg != maxSuggestions {
		t.Errorf("%d suggestions, want %d (maxSuggestions)", sugg, maxSuggestions)
	}
	if d := ds[n-1]; d.Line != fmt.Sprintf("    b%d = u%d", n-1, n-1) {
		t.Errorf("last diagnostic's line = %q", d.Line)
	}
	if took > 20*time.Second {
		t.Errorf("took %v", took)
	}
}

// TestTensorAndParamByteLimits: a four-line network with 2^24 output
// channels (issue 11: it passed check and made build allocate 17 GB) is
// refused at the call's position, per tensor and for the parameters' total;
// raising the limits accepts it, and the real networks stay far below them.
func TestTensorAndParamByteLimits(t *testing.T) {
	src := "network big(image: f32[N, 3, 8, 8]) {\n  return conv2d(image, 16777216, 3)\n}\n"
	_, err := Load("big.kiln", []byte(src), Options{Batch: 1})
	if err == nil || !strings.Contains(err.Error(), "big.kiln:2:10: param f32[16777216,3,3,3] is 1.81e+09 bytes, over the limit of 1073741824 bytes per tensor") {
		t.Fatalf("per-tensor limit: %v", err)
	}
	small := "network many(image: f32[N, 3, 8, 8]) {\n  a = conv2d(image, 64, 3, pad=1)\n  b = conv2d(a, 64, 3, pad=1)\n  return b\n}\n"
	_, err = Load("many.kiln", []byte(small), Options{Batch: 1, Limits: Limits{MaxParamBytes: 100 << 10}})
	if err == nil || !strings.Contains(err.Error(), "many.kiln:3:7: the parameters reach") {
		t.Fatalf("parameter total limit: %v", err)
	}
	if _, err := Load("big.kiln", []byte(src), Options{Batch: 1, Limits: Limits{MaxTensorBytes: 4 << 30, MaxParamBytes: 4 << 30}}); err != nil {
		t.Fatalf("raised limits: %v", err)
	}
}
