package tensor

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// Int64Array is an integer array read from a .npy file: class labels such as
// the training fixtures' batches_y.npy (dtype '<i8'), which a float32 Tensor
// cannot hold exactly in general.
type Int64Array struct {
	Shape []int
	Data  []int64
}

// ReadNPYInt64 reads a NumPy .npy file (format version 1.0 or 2.0) holding a
// C-order array of dtype '<i8' (little-endian int64, NumPy's default integer
// type, which torch.Tensor.numpy() writes for int64 labels). name is used in
// error messages only. It validates the file as strictly as [ReadNPY] (the
// same header parser and size checks) and never panics on malformed input.
func ReadNPYInt64(r io.Reader, name string) (*Int64Array, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read npy %s: %w", name, err)
	}
	return parseNPYInt64(b, name)
}

// ReadNPYInt64File reads the int64 .npy file at path; see [ReadNPYInt64].
func ReadNPYInt64File(path string) (*Int64Array, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read npy: %w", err)
	}
	return parseNPYInt64(b, path)
}

func parseNPYInt64(b []byte, name string) (*Int64Array, error) {
	h, data, err := npyFrame(b, name)
	if err != nil {
		return nil, err
	}
	if h.descr != "<i8" {
		return nil, fmt.Errorf("read npy %s: dtype %s not supported; want '<i8'", name, h.descrRepr)
	}
	numel, err := npyNumel(h, data, 8, name)
	if err != nil {
		return nil, err
	}
	out := make([]int64, numel)
	for i := range out {
		out[i] = int64(binary.LittleEndian.Uint64(data[8*i:]))
	}
	return &Int64Array{Shape: h.shape, Data: out}, nil
}
