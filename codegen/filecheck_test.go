package codegen

import (
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	const asm = `f_avx512:
	pushq	%rbp
.LBB0_1:
	vmovups	(%rdi), %zmm0
	vfmadd231ps	64(%rsi){1to16}, %zmm0, %zmm1
	vfmadd231ps	128(%rsi){1to16}, %zmm0, %zmm2
	jne	.LBB0_1

	retq
g_avx2:
	vfmadd231ps	%ymm0, %ymm1, %ymm2
	movq	%rax, -8(%rsp)
	retq`
	for _, c := range []struct {
		name, pat string
		err       string // substring of the error, "" for success
	}{
		{"plain", "CHECK: vfmadd231ps\nCHECK: zmm2", ""},
		{"regex", "CHECK: vfmadd231ps {{[0-9]+}}(%rsi){1to16}, %zmm{{[0-9]+}}", ""},
		{"regex braces", "CHECK: {{[0-9]{2,3}}}(%rsi)", ""},
		{"whitespace", "CHECK:   vmovups  (%rdi),   %zmm0", ""},
		{"order", "CHECK: zmm2\nCHECK: zmm1", "no match"},
		{"next", "CHECK: vmovups\nCHECK-NEXT: vfmadd231ps\nCHECK-NEXT: vfmadd231ps", ""},
		{"next fails", "CHECK: pushq\nCHECK-NEXT: vmovups", "CHECK-NEXT"},
		{"same", "CHECK: vfmadd231ps\nCHECK-SAME: {1to16}\nCHECK-SAME: %zmm1", ""},
		{"same fails", "CHECK: vmovups\nCHECK-SAME: zmm1", "CHECK-SAME"},
		{"empty", "CHECK: jne\nCHECK-EMPTY:\nCHECK-NEXT: retq", ""},
		{"not ok", "CHECK: .LBB0_1:\nCHECK-NOT: rsp\nCHECK: jne", ""},
		{"not fails", "CHECK: vfmadd231ps %ymm0\nCHECK-NOT: rsp\nCHECK: retq", "excluded"},
		{"not at end", "CHECK: g_avx2:\nCHECK-NOT: zmm", ""},
		{"label regions", "CHECK-LABEL: f_avx512:\nCHECK: vfmadd231ps\nCHECK-NOT: rsp\nCHECK-LABEL: g_avx2:\nCHECK: ymm", ""},
		{"label confines", "CHECK-LABEL: f_avx512:\nCHECK: ymm\nCHECK-LABEL: g_avx2:", "no match"},
		{"missing label", "CHECK-LABEL: h_neon:", "no match"},
		{"no directives", "nothing here", "no CHECK"},
		{"bad regex", "CHECK: {{[}}", "bad regex"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := Check(asm, c.pat)
			switch {
			case c.err == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case c.err != "" && err == nil:
				t.Fatalf("no error, want %q", c.err)
			case c.err != "" && !strings.Contains(err.Error(), c.err):
				t.Fatalf("error %q does not mention %q", err, c.err)
			}
		})
	}
}
