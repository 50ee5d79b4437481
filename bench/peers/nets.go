package main

import (
	"flag"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
)

// Networks other than the built-in ones. -nets takes, besides built-in
// names, paths of .kiln files (the corpus: -corpus adds tests/corpus/*.kiln)
// and of ONNX files written by another tool (bench/onnx/run.sh passes
// PyTorch's ResNet-50 and MobileNet-v2). A .kiln file is exported with
// `kiln export --onnx` like a built-in network. An ONNX file is what ONNX
// Runtime runs, as is (its batch dimension must be symbolic for batches
// other than its own), and Kiln runs its import: `kiln import` writes
// NET.kiln and NET.safetensors into the work directory once, and every
// kiln run and kiln build reads those.

// importedNet is an ONNX network's import.
type importedNet struct{ source, weights string }

// isONNX reports whether net names an ONNX file.
func isONNX(net string) bool { return strings.HasSuffix(net, ".onnx") }

// label is net's name in file names and tables: a path's base name
// without extension.
func label(net string) string {
	b := filepath.Base(net)
	return strings.TrimSuffix(strings.TrimSuffix(b, ".kiln"), ".onnx")
}

// source is what kiln commands take for net: the imported .kiln of an ONNX
// file, the path or built-in name otherwise.
func (c *config) source(net string) string {
	if im, ok := c.imported[net]; ok {
		return im.source
	}
	return net
}

// corpusNets lists tests/corpus/*.kiln under root, sorted.
func corpusNets(root string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(root, "tests", "corpus", "*.kiln"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no networks in %s", filepath.Join(root, "tests", "corpus"))
	}
	sort.Strings(files)
	return files, nil
}

// importONNX runs kiln import for every ONNX network of c.nets.
func (c *config) importONNX() error {
	c.imported = map[string]importedNet{}
	for _, net := range c.nets {
		if !isONNX(net) {
			continue
		}
		im := importedNet{
			source:  filepath.Join(c.work, label(net)+".kiln"),
			weights: filepath.Join(c.work, label(net)+".safetensors"),
		}
		if _, err := run(c.kiln, "import", net, "-o", im.source, "--weights-out", im.weights); err != nil {
			return err
		}
		c.imported[net] = im
	}
	return nil
}

// flagSet reports whether flag name was given on the command line.
func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
