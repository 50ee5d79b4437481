package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDocNetworksCheck runs `kiln check` on every code block of docs/DSL.md
// marked `kiln` (a complete network, such as the worked ResNet example): the
// documentation's networks must build, and load without warnings.
func TestDocNetworksCheck(t *testing.T) {
	src, err := os.ReadFile("../../docs/DSL.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```kiln\n(.*?)```").FindAllStringSubmatch(string(src), -1)
	if len(blocks) == 0 {
		t.Fatal("no ```kiln blocks in docs/DSL.md")
	}
	dir := t.TempDir()
	for i, b := range blocks {
		file := filepath.Join(dir, "doc"+string(rune('a'+i))+".kiln")
		if err := os.WriteFile(file, []byte(b[1]), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, target := range []string{"x86-64", "arm64-neon"} {
			code, stdout, stderr := kiln(t, "check", "--target", target, file)
			if code != 0 || stderr != "" || !strings.HasPrefix(stdout, "ok ") {
				t.Errorf("DSL.md block %d, --target %s: exit %d\nstdout: %s\nstderr: %s", i, target, code, stdout, stderr)
			}
		}
	}
}

// TestDSLWarningsPrinted: a warning of a successful load is printed to
// stderr and the command succeeds.
func TestDSLWarningsPrinted(t *testing.T) {
	file := filepath.Join(t.TempDir(), "nested.kiln")
	src := "network n(image: f32[N, 3, 8, 8]) {\n    a = batchnorm(conv2d(image, 8, 3, pad=1))\n    return a\n}\n"
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := kiln(t, "params", file)
	if code != 0 || !strings.Contains(stderr, "nested.kiln:2:19: warning: conv2d(...) nested in an expression named a creates weight, bias") ||
		!strings.Contains(stderr, "hint: ") {
		t.Errorf("exit %d, stderr:\n%s", code, stderr)
	}
}
