package main

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/dsl"
)

// TestLoadWeightsUnexpectedHugeTensor is issue 11's "an unexpected 4 GiB
// tensor is loaded before being rejected": a checkpoint holding the
// network's tensors plus one whose header declares 4 GiB (a hole in a
// sparse file) must be refused by name, dtype, shape and size with the Go
// heap growing by less than 1 MiB, under a --strip-prefix too; a wanted
// name with a wrong, huge shape is refused the same way.
func TestLoadWeightsUnexpectedHugeTensor(t *testing.T) {
	const src = "network n(x: f32[N, 3, 5, 5]) { return conv2d(x, 4, 3) }\n"
	g, err := dsl.Load("n.kiln", []byte(src), dsl.Options{Batch: 1})
	if err != nil {
		t.Fatal(err)
	}
	const huge = 4 << 30
	tests := []struct {
		name, prefix, extra string
		extraShape          string // JSON shape of the extra tensor
		want                string
	}{
		{"unexpected", "", "stray.weight", fmt.Sprint("[", huge/4, "]"), `unexpected tensor "stray.weight" (F32 1073741824, 4294967296 bytes; not read)`},
		{"unexpected with prefix", "module.", "module.stray", fmt.Sprint("[", huge/4, "]"), `unexpected tensor "stray" (F32 1073741824, 4294967296 bytes; not read)`},
		{"mis-shaped", "", "bias", fmt.Sprint("[", huge/4, "]"), `tensor "bias" has shape 1073741824, want 4 (not read)`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// The network's tensors (all 0.5), then the extra one.
			hdr := "{"
			var data []byte
			for _, p := range g.Params() {
				if tc.extra == p.Name {
					continue
				}
				n := 1
				for _, d := range p.Type.Shape {
					n *= d
				}
				shape := strings.Trim(strings.Join(strings.Fields(fmt.Sprint(p.Type.Shape)), ","), "[]")
				hdr += fmt.Sprintf("%q:{\"dtype\":\"F32\",\"shape\":[%s],\"data_offsets\":[%d,%d]},", tc.prefix+p.Name, shape, len(data), len(data)+4*n)
				for range n {
					data = binary.LittleEndian.AppendUint32(data, math.Float32bits(0.5))
				}
			}
			hdr += fmt.Sprintf("%q:{\"dtype\":\"F32\",\"shape\":%s,\"data_offsets\":[%d,%d]}}", tc.extra, tc.extraShape, len(data), len(data)+huge)
			b := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
			b = append(append(b, hdr...), data...)
			path := filepath.Join(t.TempDir(), "w.safetensors")
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, int64(len(b))+huge); err != nil {
				t.Fatal(err)
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := loadWeightsStrip(g, path, tc.prefix)
			runtime.ReadMemStats(&after)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("loadWeightsStrip: %v; want %q", err, tc.want)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
				t.Errorf("refusing the tensor allocated %d bytes; want < 1 MiB", grew)
			}
		})
	}
}
