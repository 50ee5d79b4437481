// Package archs holds Kiln's built-in network sources: the shared block
// library blocks.kiln, Inception-v4, Inception-ResNet-v1/v2 and a tiny test
// network. Package dsl loads them by name (dsl.Options{FS: archs.FS}) and
// resolves imports of library names such as "blocks.kiln" in this FS.
package archs

import (
	"embed"
	"io/fs"
	"sort"
	"strings"
)

// FS holds every *.kiln file of this directory at its root.
//
//go:embed *.kiln
var FS embed.FS

// Names returns the names of the built-in networks (the .kiln files that
// declare a network, without the extension), sorted. Library files that only
// declare blocks are left out; the test is a line starting with "network ".
func Names() []string {
	entries, err := fs.ReadDir(FS, ".")
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".kiln")
		if !ok {
			continue
		}
		src, err := fs.ReadFile(FS, e.Name())
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(src), "\n") {
			if strings.HasPrefix(line, "network ") {
				out = append(out, name)
				break
			}
		}
	}
	sort.Strings(out)
	return out
}
