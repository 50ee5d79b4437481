package main

import (
	"path/filepath"
	"testing"
)

func TestLabel(t *testing.T) {
	for _, tc := range []struct{ net, want string }{
		{"inception_v4", "inception_v4"},
		{"tests/corpus/resnet_basic.kiln", "resnet_basic"},
		{"bench/peers/work/onnx/resnet50.onnx", "resnet50"},
	} {
		if got := label(tc.net); got != tc.want {
			t.Errorf("label(%q) = %q, want %q", tc.net, got, tc.want)
		}
	}
}

// TestCorpusNets checks that -corpus finds the corpus from the repository
// root, and that source and weightArgs use an ONNX network's import.
func TestCorpusNets(t *testing.T) {
	nets, err := corpusNets(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if len(nets) < 6 {
		t.Errorf("corpus has %d networks: %v", len(nets), nets)
	}
	c := &config{imported: map[string]importedNet{"m.onnx": {source: "w/m.kiln", weights: "w/m.safetensors"}}}
	if got := c.source("m.onnx"); got != "w/m.kiln" {
		t.Errorf("source = %q", got)
	}
	if got := c.weightArgs("m.onnx"); len(got) != 2 || got[1] != "w/m.safetensors" {
		t.Errorf("weightArgs = %q", got)
	}
	if got := c.source("tiny"); got != "tiny" {
		t.Errorf("source(tiny) = %q", got)
	}
}
