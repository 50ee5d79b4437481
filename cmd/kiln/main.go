// Command kiln compiles convolutional networks written in the .kiln language.
//
// Usage: kiln <command> [flags] FILE
//
// FILE is a path to a .kiln file or the name of a built-in network
// (inception_v4, inception_resnet_v1, inception_resnet_v2, mini_inception,
// mini_inception_resnet, tiny). Exit codes: 0 success, 1 failure, 2 usage
// error.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// command is one kiln subcommand.
type command struct {
	name    string
	args    string // positional arguments, for usage
	summary string
	// setup declares the command's flags and returns the function that runs it.
	setup func(fs *flag.FlagSet, env *env) func(args []string) error
}

// env is what a command writes to.
type env struct {
	stdout, stderr io.Writer
}

// usageError marks errors that exit with status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

var commands []*command

func register(c *command) { commands = append(commands, c) }

func main() {
	// Built networks run on kiln-runner (cmd/kiln-runner), not on kiln: kiln
	// never looks for an appended payload.
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func topUsage(w io.Writer) {
	fmt.Fprintln(w, "kiln compiles convolutional networks written in the .kiln language.")
	fmt.Fprintln(w, "\nUsage: kiln <command> [flags] FILE\n\nCommands:")
	sort.Slice(commands, func(i, j int) bool { return commands[i].name < commands[j].name })
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nFILE is a .kiln path or a built-in network name ("+strings.Join(builtinNames(), ", ")+").")
	fmt.Fprintln(w, "Run 'kiln <command> -h' for a command's flags.")
}

// run executes the CLI and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		topUsage(stderr)
		return 2
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		topUsage(stdout)
		return 0
	}
	var cmd *command
	for _, c := range commands {
		if c.name == args[0] {
			cmd = c
		}
	}
	if cmd == nil {
		fmt.Fprintf(stderr, "kiln: unknown command %q\n\n", args[0])
		topUsage(stderr)
		return 2
	}
	fs := flag.NewFlagSet("kiln "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	e := &env{stdout: stdout, stderr: stderr}
	warnOut = stderr
	runFn := cmd.setup(fs, e)
	usage := func(w io.Writer) {
		fs.SetOutput(w)
		fmt.Fprintf(w, "Usage: kiln %s [flags] %s\n\n%s\n\nFlags:\n", cmd.name, cmd.args, cmd.summary)
		fs.PrintDefaults()
	}
	fs.Usage = func() {} // printed below, once, to the right stream
	pos, err := parseInterleaved(fs, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		usage(stdout)
		return 0
	}
	if err != nil {
		usage(stderr) // the flag package has printed the error itself
		return 2
	}
	if err := runFn(pos); err != nil {
		var ec exitCode
		if errors.As(err, &ec) {
			return int(ec)
		}
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "kiln %s: %s\n", cmd.name, ue.msg)
			fmt.Fprintf(stderr, "Run 'kiln %s -h' for usage.\n", cmd.name)
			return 2
		}
		fmt.Fprintf(stderr, "kiln %s: %v\n", cmd.name, err)
		return 1
	}
	return 0
}

// parseInterleaved parses flags that may appear before or after positional
// arguments (kiln stats FILE --layers), returning the positional ones.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if rest[0] == "--" {
			return append(pos, rest[1:]...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// oneFile checks that exactly one positional FILE argument was given.
func oneFile(args []string) (string, error) {
	switch len(args) {
	case 0:
		return "", usagef("missing FILE")
	case 1:
		return args[0], nil
	}
	return "", usagef("want one FILE, got %d arguments: %s", len(args), strings.Join(args, " "))
}
