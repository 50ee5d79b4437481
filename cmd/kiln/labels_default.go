package main

import (
	"slices"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/archs/labels"
	rt "github.com/kiln-dev/kiln/runtime"
)

// imagenetNetworks are the built-in networks trained on ImageNet-1k.
var imagenetNetworks = []string{"inception_v4", "inception_resnet_v1", "inception_resnet_v2"}

// defaultLabels returns the class names kiln build gives an artifact
// without --labels: ImageNet-1k's 1000 names (archs/labels, generated from
// Debian's python3-torchvision) for a built-in ImageNet network whose
// output has 1000 values per image; nil otherwise.
func defaultLabels(m *rt.Manifest) []string {
	if !slices.Contains(imagenetNetworks, m.Network) || !slices.Contains(archs.Names(), m.Network) {
		return nil
	}
	classes := 1
	for _, d := range m.Output.Shape[1:] {
		classes *= d
	}
	if classes != 1000 {
		return nil
	}
	return labels.ImageNet()
}
