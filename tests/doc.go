// Package tests holds Kiln's end-to-end and cross-package tests: the
// interpreter against the PyTorch/timm fixtures in ../shared/fixtures, IR
// round trips on every network, and every prefix of the pass pipeline against
// the unoptimized graph.
package tests
