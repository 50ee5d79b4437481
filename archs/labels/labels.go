// Package labels holds class names for the built-in networks: imagenet.txt,
// ImageNet-1k's 1000 classes in index order, generated from Debian's
// python3-torchvision by gen_imagenet_labels.sh (never edited by hand; a
// test checks that the script reproduces it where torchvision is
// installed). kiln build gives them to the built-in ImageNet networks
// unless --labels names others.
package labels

import (
	_ "embed"
	"strings"
)

//go:generate sh gen_imagenet_labels.sh

//go:embed imagenet.txt
var imagenet string

// ImageNet returns the 1000 ImageNet-1k class names in class-index order
// (a new slice on each call).
func ImageNet() []string {
	return strings.Split(strings.TrimSuffix(imagenet, "\n"), "\n")
}
