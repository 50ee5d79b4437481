package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// ev renders one test2json event line.
func ev(action, pkg, test, output string) string {
	var b strings.Builder
	b.WriteString(`{"Action":"` + action + `","Package":"` + pkg + `"`)
	if test != "" {
		b.WriteString(`,"Test":"` + test + `"`)
	}
	if output != "" {
		out := strings.ReplaceAll(strings.ReplaceAll(output, `"`, `\"`), "\n", `\n`)
		b.WriteString(`,"Output":"` + out + `"`)
	}
	return b.String() + "}\n"
}

func TestSummary(t *testing.T) {
	pass := ev("run", "p/a", "TestA", "") + ev("output", "p/a", "TestA", "=== RUN   TestA\n") +
		ev("output", "p/a", "TestA", "--- PASS: TestA (0.00s)\n") + ev("pass", "p/a", "TestA", "") +
		ev("output", "p/a", "", "ok  \tp/a\t0.1s\n") + ev("pass", "p/a", "", "")
	sub := ev("run", "p/b", "TestB", "") + ev("run", "p/b", "TestB/x", "") +
		ev("output", "p/b", "TestB/x", "    --- FAIL: TestB/x (0.00s)\n") +
		ev("output", "p/b", "TestB/x", "        b_test.go:9: got 2, want 3\n") +
		ev("fail", "p/b", "TestB/x", "") + ev("fail", "p/b", "TestB", "") +
		ev("output", "p/b", "", "FAIL\tp/b\t0.2s\n") + ev("fail", "p/b", "", "")
	toolSkip := ev("run", "p/c", "TestC", "") + ev("output", "p/c", "TestC", "=== RUN   TestC\n") +
		ev("output", "p/c", "TestC", "    c_test.go:5: skipping: clang-19 not found\n") +
		ev("output", "p/c", "TestC", "--- SKIP: TestC (0.00s)\n") + ev("skip", "p/c", "TestC", "")
	shortSkip := ev("run", "p/d", "TestD", "") + ev("output", "p/d", "TestD", "--- SKIP: TestD (0.00s)\n") +
		ev("output", "p/d", "TestD", "    d_test.go:5: skipped with -short\n") + ev("skip", "p/d", "TestD", "")
	buildFail := `{"ImportPath":"p/e [p/e.test]","Action":"build-output","Output":"e.go:1:1: syntax error\n"}` + "\n" +
		`{"ImportPath":"p/e [p/e.test]","Action":"build-fail"}` + "\n" +
		`{"Action":"fail","Package":"p/e","FailedBuild":"p/e [p/e.test]"}` + "\n"
	noTests := ev("output", "p/f", "", "?   \tp/f\t[no test files]\n") + ev("skip", "p/f", "", "")
	cases := []struct {
		name    string
		in      string
		require bool
		code    int
		last    string
		want    []string
	}{
		{"all pass", pass + noTests, true, 0, "1 passed, 0 failed, 0 skipped",
			[]string{"ok  \tp/a", "no test skipped for a missing tool"}},
		{"subtest fails", pass + sub, false, 1, "1 passed, 2 failed, 0 skipped",
			[]string{"--- output of failed test p/b TestB/x:", "b_test.go:9: got 2, want 3", "FAIL\tp/b"}},
		{"tool skip outside CI", pass + toolSkip, false, 0, "1 passed, 0 failed, 1 skipped",
			[]string{"p/c TestC: c_test.go:5: skipping: clang-19 not found"}},
		{"tool skip under require", pass + toolSkip, true, 1, "1 passed, 0 failed, 1 skipped",
			[]string{"1 test(s) skipped for a reason other than -short"}},
		{"short skip under require", pass + shortSkip, true, 0, "1 passed, 0 failed, 1 skipped",
			[]string{"no test skipped for a missing tool"}},
		{"build failure", pass + buildFail, false, 1, "1 passed, 1 failed, 0 skipped",
			[]string{"e.go:1:1: syntax error", "p/e (package: build error"}},
		{"not json", "go: cannot find main module\n", false, 0, "0 passed, 0 failed, 0 skipped",
			[]string{"go: cannot find main module"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errs bytes.Buffer
			args := []string{"-require=false"}
			if c.require {
				args = []string{"-require"}
			}
			code := run(args, strings.NewReader(c.in), &out, &errs)
			got := out.String()
			if code != c.code {
				t.Errorf("exit %d, want %d\n%s%s", code, c.code, got, errs.String())
			}
			lines := strings.Split(strings.TrimSpace(got), "\n")
			if last := lines[len(lines)-1]; last != c.last {
				t.Errorf("last line %q, want %q\n%s", last, c.last, got)
			}
			for _, w := range c.want {
				if !strings.Contains(got, w) {
					t.Errorf("output lacks %q:\n%s", w, got)
				}
			}
		})
	}
}

// TestRunCommand runs a command whose output is test2json events, saves them
// with -json, and passes on its failure.
func TestRunCommand(t *testing.T) {
	dir := t.TempDir()
	events := filepath.Join(dir, "events")
	in := ev("run", "p/a", "TestA", "") + ev("pass", "p/a", "TestA", "")
	if err := os.WriteFile(events, []byte(in), 0o644); err != nil {
		t.Fatal(err)
	}
	saved := filepath.Join(dir, "saved.json")
	var out, errs bytes.Buffer
	if code := run([]string{"-require=false", "-json", saved, "--", "cat", events}, nil, &out, &errs); code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out.String(), errs.String())
	}
	if b, err := os.ReadFile(saved); err != nil || string(b) != in {
		t.Fatalf("saved %q, %v; want %q", b, err, in)
	}
	if !strings.HasSuffix(out.String(), "1 passed, 0 failed, 0 skipped\n") {
		t.Errorf("output:\n%s", out.String())
	}
	out.Reset()
	if code := run([]string{"-require=false", "--", "sh", "-c", "cat " + events + "; exit 3"}, nil, &out, &errs); code != 1 {
		t.Errorf("failing command: exit %d, want 1\n%s", code, out.String())
	}
}
