// Command testsummary runs `go test -json` (or reads its output) and says
// what ran: per package the tests that passed, failed and skipped, the full
// output of every failed test, the reason of every skip, and finally one line
// of the form
//
//	N passed, M failed, K skipped
//
// which CI reads, after a line "T tests ran in P packages". Counts include subtests (a test and each of its subtests
// count once each). A package that fails outside any test (a build error, a
// panic in TestMain, a timeout) counts as one failed test named after the
// package.
//
// Usage:
//
//	testsummary [-json FILE] [-require] -- go test -json ./...
//	go test -json ./... | testsummary [-require]
//
// With a command, testsummary runs it, reads its standard output as test2json
// events and passes its standard error through; -json also saves the events.
// While the tests run it echoes each package's result line ("ok ...",
// "FAIL ...") and, at once, the output of each failed test, so CI logs keep
// go test's failure output.
//
// The exit status is 1 if any test failed, the command failed, or, under
// -require (default: KILN_REQUIRE_TOOLS is set, as in CI), any test skipped
// for a reason other than -short. Under KILN_REQUIRE_TOOLS=1 the tests fail
// instead of skipping when a tool, cgo or a CPU feature is missing
// (internal/testenv), and CI runs without -short, so a skip there means a
// test escaped that rule: it is reported by name with its reason. The last
// lines then state that no test skipped for a missing tool.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/kiln-dev/kiln/internal/testenv"
)

// event is one test2json record (cmd/test2json).
type event struct {
	Action      string
	Package     string
	Test        string
	Output      string
	ImportPath  string // build-output and build-fail
	FailedBuild string
}

type pkgCounts struct {
	pass, fail, skip int
	failed           bool // the package's own result is fail
}

type skip struct {
	name, reason string
}

type summary struct {
	out      io.Writer
	pkgs     map[string]*pkgCounts
	order    []string                    // packages in order of first appearance
	output   map[string]*strings.Builder // package + "\x00" + test -> output so far
	skips    []skip
	failures []string
}

func newSummary(out io.Writer) *summary {
	return &summary{out: out, pkgs: map[string]*pkgCounts{}, output: map[string]*strings.Builder{}}
}

func (s *summary) pkg(name string) *pkgCounts {
	p, ok := s.pkgs[name]
	if !ok {
		p = &pkgCounts{}
		s.pkgs[name] = p
		s.order = append(s.order, name)
	}
	return p
}

// add takes one event: it accumulates output per test, counts results and
// echoes package result lines, build errors and failed tests' output.
func (s *summary) add(e event) {
	switch e.Action {
	case "build-output":
		fmt.Fprint(s.out, e.Output)
		return
	case "build-fail":
		return
	}
	if e.Package == "" {
		return
	}
	key := e.Package + "\x00" + e.Test
	switch e.Action {
	case "output":
		b := s.output[key]
		if b == nil {
			b = &strings.Builder{}
			s.output[key] = b
		}
		b.WriteString(e.Output)
		// Package-level lines: "ok pkg 1.2s", "FAIL pkg", "? pkg [no test
		// files]", panics and timeouts outside a test.
		if e.Test == "" && e.Output != "PASS\n" && e.Output != "FAIL\n" {
			fmt.Fprint(s.out, e.Output)
		}
	case "pass":
		if e.Test != "" {
			s.pkg(e.Package).pass++
		}
		delete(s.output, key)
	case "skip":
		if e.Test != "" {
			s.pkg(e.Package).skip++
			s.skips = append(s.skips, skip{e.Package + " " + e.Test, skipReason(s.text(key))})
		}
		delete(s.output, key)
	case "fail":
		p := s.pkg(e.Package)
		if e.Test != "" {
			p.fail++
			s.failures = append(s.failures, e.Package+" "+e.Test)
			fmt.Fprintf(s.out, "--- output of failed test %s %s:\n%s", e.Package, e.Test, s.text(key))
		} else {
			p.failed = true
		}
		delete(s.output, key)
	}
}

func (s *summary) text(key string) string {
	if b := s.output[key]; b != nil {
		return b.String()
	}
	return ""
}

// skipReason extracts the message of a skip from a test's output: its
// lines without the "=== RUN" (PAUSE, CONT, NAME) and "--- SKIP" markers
// (test2json prints the message before "--- SKIP").
func skipReason(out string) string {
	var msg []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "=== ") && !strings.HasPrefix(l, "--- SKIP") {
			msg = append(msg, l)
		}
	}
	return strings.Join(msg, " ")
}

// shortSkip reports whether a skip reason names -short: a deliberate skip,
// not one for something missing.
func shortSkip(reason string) bool {
	return strings.Contains(reason, "-short") || strings.Contains(reason, "short mode")
}

// report prints the per-package table, the skips and the final line, and
// returns whether the run is acceptable.
func (s *summary) report(require bool) bool {
	var pass, fail, skipped, npkgs int
	fmt.Fprintln(s.out, "\ntest summary (tests and subtests):")
	fmt.Fprintf(s.out, "%-50s %7s %7s %7s\n", "package", "passed", "failed", "skipped")
	order := slices.Clone(s.order)
	slices.Sort(order)
	for _, name := range order {
		p := s.pkgs[name]
		if p.failed && p.fail == 0 {
			// Failed outside any test: build error, TestMain, timeout.
			p.fail = 1
			s.failures = append(s.failures, name+" (package: build error, TestMain or timeout; see its output above)")
		}
		if p.pass+p.fail+p.skip == 0 {
			continue
		}
		fmt.Fprintf(s.out, "%-50s %7d %7d %7d\n", name, p.pass, p.fail, p.skip)
		npkgs++
		pass, fail, skipped = pass+p.pass, fail+p.fail, skipped+p.skip
	}
	ok := fail == 0
	var unexpected []skip
	if len(s.skips) > 0 {
		fmt.Fprintln(s.out, "\nskipped:")
		for _, sk := range s.skips {
			fmt.Fprintf(s.out, "  %s: %s\n", sk.name, sk.reason)
			if !shortSkip(sk.reason) {
				unexpected = append(unexpected, sk)
			}
		}
	}
	if len(s.failures) > 0 {
		fmt.Fprintln(s.out, "\nfailed:")
		for _, f := range s.failures {
			fmt.Fprintf(s.out, "  %s\n", f)
		}
	}
	fmt.Fprintln(s.out)
	if require {
		if len(unexpected) > 0 {
			ok = false
			fmt.Fprintf(s.out, "%s=1: %d test(s) skipped for a reason other than -short (a missing tool, cgo or CPU feature must fail instead; see internal/testenv)\n",
				testenv.RequireEnv, len(unexpected))
		} else {
			fmt.Fprintf(s.out, "%s=1: no test skipped for a missing tool, cgo or CPU feature\n", testenv.RequireEnv)
		}
	}
	fmt.Fprintf(s.out, "%d tests ran in %d packages\n", pass+fail+skipped, npkgs)
	fmt.Fprintf(s.out, "%d passed, %d failed, %d skipped\n", pass, fail, skipped)
	return ok
}

// read decodes test2json events from r until EOF. Lines that are not JSON
// (for example a go command error before any test ran) are echoed.
func (s *summary) read(r io.Reader, save io.Writer) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if save != nil {
			save.Write(line)
			save.Write([]byte{'\n'})
		}
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			fmt.Fprintf(s.out, "%s\n", line)
			continue
		}
		s.add(e)
	}
	return sc.Err()
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("testsummary", flag.ContinueOnError)
	fs.SetOutput(stderr)
	jsonFile := fs.String("json", "", "also write the test2json events to `FILE`")
	require := fs.Bool("require", testenv.Required(), "fail on any skip not for -short (default: "+testenv.RequireEnv+" is set)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var save io.Writer
	if *jsonFile != "" {
		f, err := os.Create(*jsonFile)
		if err != nil {
			fmt.Fprintf(stderr, "testsummary: %v\n", err)
			return 1
		}
		defer f.Close()
		bw := bufio.NewWriter(f)
		defer bw.Flush()
		save = bw
	}
	s := newSummary(stdout)
	cmdFailed := false
	if cmdArgs := fs.Args(); len(cmdArgs) > 0 {
		cmd := exec.Command(cmdArgs[0], cmdArgs[1:]...)
		cmd.Stdin, cmd.Stderr = stdin, stderr
		pipe, err := cmd.StdoutPipe()
		if err != nil {
			fmt.Fprintf(stderr, "testsummary: %v\n", err)
			return 1
		}
		if err := cmd.Start(); err != nil {
			fmt.Fprintf(stderr, "testsummary: %s: %v\n", cmdArgs[0], err)
			return 1
		}
		rerr := s.read(pipe, save)
		werr := cmd.Wait()
		if rerr != nil {
			fmt.Fprintf(stderr, "testsummary: reading %s: %v\n", cmdArgs[0], rerr)
			cmdFailed = true
		}
		var exit *exec.ExitError
		if werr != nil && !errors.As(werr, &exit) {
			fmt.Fprintf(stderr, "testsummary: %s: %v\n", strings.Join(cmdArgs, " "), werr)
		}
		if werr != nil {
			cmdFailed = true
		}
	} else if err := s.read(stdin, save); err != nil {
		fmt.Fprintf(stderr, "testsummary: reading standard input: %v\n", err)
		cmdFailed = true
	}
	ok := s.report(*require)
	if cmdFailed && ok {
		fmt.Fprintln(stdout, "the test command failed (see above) although no test failed")
	}
	if !ok || cmdFailed {
		return 1
	}
	return 0
}
