// Package data loads training data for kiln train: Fashion-MNIST from its IDX
// files, and folders of JPEG/PNG images with one subdirectory per class; and
// draws the seeded shuffles and augmentations of a training run.
//
// Files are treated as hostile: headers are validated against the data that
// follows them, sizes are bounded before anything is allocated, and decoding
// never panics on bad input.
package data

import (
	"bufio"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// MaxIDXBytes bounds the data of one IDX file (1 GiB; Fashion-MNIST's
// training images are 47 MB): a header announcing more is rejected before
// anything is allocated.
const MaxIDXBytes = 1 << 30

// IDX is an unsigned-byte IDX array (LeCun et al.'s MNIST format): Dims[0]
// items of Dims[1]×…×Dims[n−1] bytes each, row-major.
type IDX struct {
	Dims []int
	Data []uint8
	// Total is the number of items the header announces (Dims[0] before
	// a limit).
	Total int
}

// ReadIDXFile reads an unsigned-byte IDX file, gzip-compressed (detected by
// its magic bytes 1f 8b) or not, and checks that it has ndims dimensions. With
// limit > 0 only the first limit items are read (Dims[0] becomes at most
// limit); otherwise the whole file is read and anything after the announced
// data is an error.
//
// The format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type
// byte (0x08 for unsigned byte, the only type accepted), the number of
// dimensions, then each dimension as a big-endian uint32, then the data.
// The header is validated before any allocation: type, rank, every
// dimension positive, the product at most MaxIDXBytes; then the data must be
// as long as the header says (a short file is reported as truncated, naming
// how many bytes it holds and how many the header announces).
func ReadIDXFile(path string, ndims, limit int) (*IDX, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	x, err := ReadIDX(f, ndims, limit)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return x, nil
}

// ReadIDX is ReadIDXFile on a reader.
func ReadIDX(r io.Reader, ndims, limit int) (*IDX, error) {
	br := bufio.NewReader(r)
	var src io.Reader = br
	if m, err := br.Peek(2); err == nil && m[0] == 0x1f && m[1] == 0x8b {
		z, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip: %v", err)
		}
		defer z.Close()
		src = z
	}
	var hdr [4]byte
	if _, err := io.ReadFull(src, hdr[:]); err != nil {
		return nil, fmt.Errorf("not an IDX file: %s reading the 4-byte magic", short(err))
	}
	if hdr[0] != 0 || hdr[1] != 0 {
		return nil, fmt.Errorf("not an IDX file: magic %02x %02x %02x %02x does not start with two zero bytes", hdr[0], hdr[1], hdr[2], hdr[3])
	}
	if hdr[2] != 0x08 {
		return nil, fmt.Errorf("IDX type 0x%02x: only unsigned bytes (0x08) are supported", hdr[2])
	}
	if int(hdr[3]) != ndims {
		return nil, fmt.Errorf("IDX file has %d dimensions, want %d", hdr[3], ndims)
	}
	dims := make([]int, ndims)
	per := 1 // bytes per item
	for i := range dims {
		var b [4]byte
		if _, err := io.ReadFull(src, b[:]); err != nil {
			return nil, fmt.Errorf("IDX header: %s reading dimension %d", short(err), i)
		}
		d := binary.BigEndian.Uint32(b[:])
		if d == 0 || d > MaxIDXBytes {
			return nil, fmt.Errorf("IDX header: dimension %d is %d", i, d)
		}
		dims[i] = int(d)
		if i > 0 {
			per *= int(d)
			if per > MaxIDXBytes {
				return nil, fmt.Errorf("IDX header: items of more than %d bytes", MaxIDXBytes)
			}
		}
	}
	if dims[0] > MaxIDXBytes/per {
		return nil, fmt.Errorf("IDX header: %s bytes announced, more than the %d accepted", dimString(dims), MaxIDXBytes)
	}
	n := dims[0]
	if limit > 0 && limit < n {
		n = limit
	}
	data := make([]uint8, n*per)
	if got, err := io.ReadFull(src, data); err != nil {
		return nil, fmt.Errorf("truncated IDX file: the header announces %s = %d bytes of data, the file holds %d (%s)",
			dimString(dims), dims[0]*per, got, short(err))
	}
	if n == dims[0] {
		var b [1]byte
		k, err := io.ReadFull(src, b[:])
		if k != 0 {
			return nil, fmt.Errorf("IDX file: data after the %s = %d bytes the header announces", dimString(dims), dims[0]*per)
		}
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("IDX file: %v", err) // e.g. a gzip checksum error
		}
	}
	total := dims[0]
	dims[0] = n
	return &IDX{Dims: dims, Data: data, Total: total}, nil
}

func short(err error) string {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return "end of file"
	}
	return err.Error()
}

func dimString(d []int) string {
	s := ""
	for i, v := range d {
		if i > 0 {
			s += "×"
		}
		s += fmt.Sprint(v)
	}
	return s
}
