package tensor

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// writeSparseST writes a safetensors file with a 4-element F32 tensor "w"
// followed by the tensor extra of extraBytes bytes (F32, 1-D), whose data
// is a hole: the file is extended with Truncate, so it takes no disk space
// and writing it takes no time.
func writeSparseST(t *testing.T, extra string, extraBytes int64) string {
	t.Helper()
	hdr := fmt.Sprintf(`{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},%q:{"dtype":"F32","shape":[%d],"data_offsets":[16,%d]}}`,
		extra, extraBytes/4, 16+extraBytes)
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
	b = append(b, hdr...)
	for i := range 4 {
		b = binary.LittleEndian.AppendUint32(b, uint32(0x3f800000+i)) // ≈1.0
	}
	path := filepath.Join(t.TempDir(), "sparse.safetensors")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, int64(len(b))+extraBytes); err != nil {
		t.Fatal(err)
	}
	return path
}

// heapGrowth returns how many bytes the Go heap grew (total allocated)
// while f ran.
func heapGrowth(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// TestReadSafetensorsSelectSkipsUnexpected checks issue 11 item 2: a file
// whose header declares an unexpected 4 GiB tensor is refused by its header,
// without reading or allocating its data (bounded by the Go heap's total
// allocation during the read), and the refusal names the tensor, its dtype,
// shape and byte size.
func TestReadSafetensorsSelectSkipsUnexpected(t *testing.T) {
	const extraBytes = 4 << 30
	path := writeSparseST(t, "huge", extraBytes)
	var f *File
	var err error
	grew := heapGrowth(func() {
		f, err = ReadSafetensorsFileSelect(path, func(h SafetensorsHeader) bool { return h.Name == "w" })
	})
	if err != nil {
		t.Fatal(err)
	}
	if grew > 1<<20 {
		t.Errorf("reading the header and one 16-byte tensor allocated %d bytes; want < 1 MiB", grew)
	}
	if len(f.Names) != 1 || f.Names[0] != "w" || len(f.Tensors["w"].Data) != 4 {
		t.Errorf("read %v; want only w with 4 values", f.Names)
	}
	want := []SafetensorsHeader{{Name: "huge", DType: "F32", Shape: []int{extraBytes / 4}, Bytes: extraBytes}}
	if fmt.Sprint(f.Unread) != fmt.Sprint(want) {
		t.Errorf("Unread = %v, want %v", f.Unread, want)
	}
	err = CheckWeightsUnread(path, []Spec{{Name: "w", Shape: []int{4}}}, f.Tensors, f.Unread)
	if err == nil || !strings.Contains(err.Error(), `unexpected tensor "huge" (F32 1073741824, 4294967296 bytes; not read)`) {
		t.Errorf("CheckWeightsUnread: %v; want the unexpected 4 GiB tensor named", err)
	}
}

// TestCheckWeightsUnread checks that an unread tensor counts as present
// with its declared shape: wanted and well-shaped is no problem, wanted and
// mis-shaped is reported as such, and never as missing.
func TestCheckWeightsUnread(t *testing.T) {
	got := map[string]*Tensor{"a": {Shape: []int{2}, Data: []float32{1, 2}}}
	tests := []struct {
		name   string
		unread []SafetensorsHeader
		want   string // "" = no error
	}{
		{"well-shaped", []SafetensorsHeader{{Name: "b", DType: "F32", Shape: []int{3}, Bytes: 12}}, ""},
		{"mis-shaped", []SafetensorsHeader{{Name: "b", DType: "F16", Shape: []int{5}, Bytes: 10}}, `tensor "b" has shape 5, want 3 (not read)`},
		{"missing", nil, `missing tensor "b"`},
		{"counter ignored", []SafetensorsHeader{{Name: "b", DType: "F32", Shape: []int{3}, Bytes: 12}, {Name: "bn.num_batches_tracked", DType: "I64", Bytes: 8}}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckWeightsUnread("f", []Spec{{Name: "a", Shape: []int{2}}, {Name: "b", Shape: []int{3}}}, got, tc.unread)
			if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
}
