// Command gen rewrites the "what compiles on which target" table of
// docs/DSL.md from the code (package optable): `go generate
// ./internal/optable`.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/kiln-dev/kiln/internal/optable"
	"github.com/kiln-dev/kiln/ir/tensor"
)

func main() {
	doc := flag.String("doc", "docs/DSL.md", "the document holding the generated section")
	flag.Parse()
	if err := run(*doc); err != nil {
		fmt.Fprintln(os.Stderr, "optable:", err)
		os.Exit(1)
	}
}

func run(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	t, err := optable.Build()
	if err != nil {
		return err
	}
	out, err := optable.Replace(string(b), t.Markdown())
	if err != nil {
		return fmt.Errorf("%s: %v", path, err)
	}
	if out == string(b) {
		return nil
	}
	return tensor.WriteFileAtomic(path, func(w io.Writer) error {
		_, err := io.WriteString(w, out)
		return err
	})
}
