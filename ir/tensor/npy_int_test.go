package tensor

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func i64LE(vs ...int64) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint64(b, uint64(v))
	}
	return b
}

// TestReadNPYInt64 reads int64 arrays (labels) and rejects every other
// dtype and malformed data with a message naming the file.
func TestReadNPYInt64(t *testing.T) {
	hdr := func(dict string) string { return dict + strings.Repeat(" ", 63-len(dict)%64) + "\n" }
	tests := []struct {
		name  string
		file  []byte
		want  *Int64Array
		error string
	}{
		{
			name: "labels (3, 2)",
			file: mkNPY(1, hdr("{'descr': '<i8', 'fortran_order': False, 'shape': (3, 2), }"), i64LE(0, 9, 3, -1, 1<<40, 7)),
			want: &Int64Array{Shape: []int{3, 2}, Data: []int64{0, 9, 3, -1, 1 << 40, 7}},
		},
		{
			name: "version 2.0, shape (4,)",
			file: mkNPY(2, hdr("{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }"), i64LE(5, 6, 7, 8)),
			want: &Int64Array{Shape: []int{4}, Data: []int64{5, 6, 7, 8}},
		},
		{
			name: "empty",
			file: mkNPY(1, hdr("{'descr': '<i8', 'fortran_order': False, 'shape': (0,), }"), nil),
			want: &Int64Array{Shape: []int{0}, Data: []int64{}},
		},
		{
			name:  "float32",
			file:  mkNPY(1, hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }"), f32LE(1, 2)),
			error: "labels.npy: dtype '<f4' not supported; want '<i8'",
		},
		{
			name:  "int32",
			file:  mkNPY(1, hdr("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }"), i64LE(1)),
			error: "dtype '<i4' not supported; want '<i8'",
		},
		{
			name:  "big-endian",
			file:  mkNPY(1, hdr("{'descr': '>i8', 'fortran_order': False, 'shape': (1,), }"), i64LE(1)),
			error: "dtype '>i8' not supported",
		},
		{
			name:  "truncated data",
			file:  mkNPY(1, hdr("{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }"), i64LE(1, 2)),
			error: "truncated data: shape (3,) of <i8 needs 24 bytes, got 16",
		},
		{
			name:  "trailing garbage",
			file:  mkNPY(1, hdr("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }"), i64LE(1, 2)),
			error: "trailing garbage: 8 bytes after the 8 data bytes",
		},
		{
			name:  "fortran order",
			file:  mkNPY(1, hdr("{'descr': '<i8', 'fortran_order': True, 'shape': (1,), }"), i64LE(1)),
			error: "fortran_order True not supported",
		},
		{
			name:  "not npy",
			file:  []byte("hello, world"),
			error: "bad magic",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadNPYInt64(bytes.NewReader(tt.file), "labels.npy")
			if tt.error != "" {
				if err == nil || !strings.Contains(err.Error(), tt.error) || !strings.Contains(err.Error(), "labels.npy") {
					t.Fatalf("error %v, want one naming labels.npy and containing %q", err, tt.error)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
