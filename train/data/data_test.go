package data

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/testenv"
)

// idxBytes builds an unsigned-byte IDX file with the given dims and data.
func idxBytes(magic [4]byte, dims []uint32, data []byte) []byte {
	var b bytes.Buffer
	b.Write(magic[:])
	for _, d := range dims {
		binary.Write(&b, binary.BigEndian, d)
	}
	b.Write(data)
	return b.Bytes()
}

func gz(b []byte) []byte {
	var out bytes.Buffer
	z := gzip.NewWriter(&out)
	z.Write(b)
	z.Close()
	return out.Bytes()
}

func TestReadIDX(t *testing.T) {
	ok := idxBytes([4]byte{0, 0, 8, 3}, []uint32{2, 2, 3}, []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	cases := []struct {
		name  string
		file  []byte
		ndims int
		limit int
		want  string // error substring; "" for success
		n     int
	}{
		{"plain", ok, 3, 0, "", 2},
		{"gzip", gz(ok), 3, 0, "", 2},
		{"limit", gz(ok), 3, 1, "", 1},
		{"empty", nil, 3, 0, "reading the 4-byte magic", 0},
		{"bad magic", idxBytes([4]byte{1, 2, 8, 3}, []uint32{2, 2, 3}, make([]byte, 12)), 3, 0, "does not start with two zero bytes", 0},
		{"float type", idxBytes([4]byte{0, 0, 0x0d, 3}, []uint32{2, 2, 3}, make([]byte, 12)), 3, 0, "only unsigned bytes", 0},
		{"wrong rank", idxBytes([4]byte{0, 0, 8, 1}, []uint32{12}, make([]byte, 12)), 3, 0, "has 1 dimensions, want 3", 0},
		{"truncated header", idxBytes([4]byte{0, 0, 8, 3}, []uint32{2}, nil), 3, 0, "reading dimension 1", 0},
		{"truncated data", ok[:len(ok)-1], 3, 0, "the file holds 11", 0},
		{"truncated gzip", gz(ok[:len(ok)-5]), 3, 0, "truncated IDX file", 0},
		{"trailing data", append(append([]byte{}, ok...), 0), 3, 0, "data after", 0},
		{"zero dim", idxBytes([4]byte{0, 0, 8, 3}, []uint32{0, 2, 3}, nil), 3, 0, "dimension 0 is 0", 0},
		{"huge", idxBytes([4]byte{0, 0, 8, 3}, []uint32{1 << 20, 1 << 10, 1 << 10}, nil), 3, 0, "more than", 0},
	}
	for _, c := range cases {
		x, err := ReadIDX(bytes.NewReader(c.file), c.ndims, c.limit)
		if c.want == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			} else if x.Dims[0] != c.n || len(x.Data) != c.n*6 || x.Total != 2 || x.Data[len(x.Data)-1] != byte(c.n*6) {
				t.Errorf("%s: dims %v, %d bytes, total %d", c.name, x.Dims, len(x.Data), x.Total)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
}

// TestLoadIDXDir checks the four-file loader on synthetic files: labels out
// of range and mismatched counts are errors naming the file.
func TestLoadIDXDir(t *testing.T) {
	write := func(dir, name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk := func(labels []byte, n uint32) string {
		dir := t.TempDir()
		img := idxBytes([4]byte{0, 0, 8, 3}, []uint32{n, 2, 2}, bytes.Repeat([]byte{255}, int(n)*4))
		write(dir, "train-images-idx3-ubyte.gz", gz(img))
		write(dir, "t10k-images-idx3-ubyte", img)
		write(dir, "train-labels-idx1-ubyte.gz", gz(idxBytes([4]byte{0, 0, 8, 1}, []uint32{uint32(len(labels))}, labels)))
		write(dir, "t10k-labels-idx1-ubyte", idxBytes([4]byte{0, 0, 8, 1}, []uint32{uint32(len(labels))}, labels))
		return dir
	}
	tr, te, err := LoadFashionMNIST(mk([]byte{0, 9, 3}, 3), 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Len() != 2 || te.Len() != 3 || tr.Label(1) != 9 || tr.Shape() != [3]int{1, 2, 2} {
		t.Errorf("train %d items, test %d, label %d, shape %v", tr.Len(), te.Len(), tr.Label(1), tr.Shape())
	}
	img := make([]float32, 4)
	if err := tr.Image(0, img); err != nil || img[0] != (1-FashionMean)/FashionStd {
		t.Errorf("image: %v %v", img, err)
	}
	if _, _, err := LoadFashionMNIST(mk([]byte{0, 10, 3}, 3), 0, 0); err == nil || !strings.Contains(err.Error(), "label 10 of item 1") {
		t.Errorf("bad label: %v", err)
	}
	if _, _, err := LoadFashionMNIST(mk([]byte{0, 1}, 3), 0, 0); err == nil || !strings.Contains(err.Error(), "3 images but") {
		t.Errorf("count mismatch: %v", err)
	}
	if _, _, err := LoadFashionMNIST(t.TempDir(), 0, 0); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("empty dir: %v", err)
	}
}

// TestFashionMNIST reads the real files (Debian's dataset-fashion-mnist):
// the documented sizes and the first training label (9, ankle boot).
func TestFashionMNIST(t *testing.T) {
	if _, err := os.Stat(FashionMNISTDir); err != nil {
		testenv.Missing(t, "Fashion-MNIST not installed (%s)", FashionMNISTInstall)
	}
	tr, te, err := LoadFashionMNIST(FashionMNISTDir, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Len() != 60000 || te.Len() != 100 || tr.Shape() != [3]int{1, 28, 28} || tr.Label(0) != 9 {
		t.Errorf("train %d, test %d, shape %v, first label %d", tr.Len(), te.Len(), tr.Shape(), tr.Label(0))
	}
}

func TestOrder(t *testing.T) {
	a, b, c := Order(7, 0, 50), Order(7, 0, 50), Order(7, 1, 50)
	seen := map[int]bool{}
	same := true
	for i := range a {
		seen[a[i]] = true
		if a[i] != b[i] {
			t.Fatalf("same seed and epoch, different orders")
		}
		same = same && a[i] == c[i]
	}
	if len(seen) != 50 || same {
		t.Errorf("not a permutation, or epochs 0 and 1 have the same order")
	}
}

// TestAugment checks the crop and flip against the definition on a 1x2x3
// image, over many draws: every output is the input shifted by (dy, dx) in
// [-pad, pad] (then mirrored), padded with the fill value.
func TestAugment(t *testing.T) {
	src := []float32{1, 2, 3, 4, 5, 6}
	fill := func(int) float32 { return -1 }
	dst := make([]float32, 6)
	Augment{}.Apply(1, 0, 0, 1, 2, 3, fill, src, dst)
	if !equal(dst, src) {
		t.Errorf("no augmentation: %v", dst)
	}
	flips, shifts := 0, 0
	for pos := range 200 {
		Augment{Pad: 1, Flip: true}.Apply(3, 0, pos, 1, 2, 3, fill, src, dst)
		found := false
		for dy := -1; dy <= 1 && !found; dy++ {
			for dx := -1; dx <= 1 && !found; dx++ {
				for _, fl := range []bool{false, true} {
					want := make([]float32, 6)
					for y := range 2 {
						for x := range 3 {
							sx := x + dx
							if fl {
								sx = 2 - x + dx
							}
							want[y*3+x] = -1
							if y+dy >= 0 && y+dy < 2 && sx >= 0 && sx < 3 {
								want[y*3+x] = src[(y+dy)*3+sx]
							}
						}
					}
					if equal(dst, want) {
						found = true
						if fl {
							flips++
						}
						if dx != 0 || dy != 0 {
							shifts++
						}
						break
					}
				}
			}
		}
		if !found {
			t.Fatalf("pos %d: %v is no crop or flip of %v", pos, dst, src)
		}
	}
	if flips < 60 || flips > 140 || shifts < 150 {
		t.Errorf("%d flips and %d shifts in 200 draws", flips, shifts)
	}
}

func equal(a, b []float32) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return len(a) == len(b)
}

// TestFolder lists an image folder and reads its images through the
// network's preprocessing; undecodable files are errors naming the file.
func TestFolder(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []string{"cat", "ant"} {
		os.MkdirAll(filepath.Join(dir, c), 0o755)
		img := image.NewRGBA(image.Rect(0, 0, 20, 16))
		for i := range img.Pix {
			img.Pix[i] = 255
		}
		img.Set(0, 0, color.RGBA{0, 0, 0, 255})
		var b bytes.Buffer
		png.Encode(&b, img)
		os.WriteFile(filepath.Join(dir, c, "a.png"), b.Bytes(), 0o644)
		os.WriteFile(filepath.Join(dir, c, "notes.txt"), []byte("x"), 0o644)
	}
	os.WriteFile(filepath.Join(dir, "cat", "broken.JPG"), []byte("not a jpeg"), 0o644)
	f, err := LoadFolder(dir, [3]int{1, 8, 8}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if f.Len() != 3 || f.Classes() != 2 || f.ClassNames[0] != "ant" || f.Label(2) != 1 {
		t.Fatalf("%d items, classes %v, labels %v", f.Len(), f.ClassNames, f.Labels)
	}
	x := make([]float32, 64)
	if err := f.Image(0, x); err != nil {
		t.Fatal(err)
	}
	if x[35] != 1 { // white, normalised with mean and std 0.5
		t.Errorf("centre pixel %v, want 1", x[35])
	}
	if err := f.Image(2, x); err == nil || !strings.Contains(err.Error(), "broken.JPG") {
		t.Errorf("broken image: %v", err)
	}
	if _, err := LoadFolder(dir, [3]int{3, 8, 8}, []string{"ant", "bee"}); err == nil || !strings.Contains(err.Error(), "differ from the training set") {
		t.Errorf("class mismatch: %v", err)
	}
	if _, err := LoadFolder(dir, [3]int{3, 8, 9}, nil); err == nil {
		t.Errorf("non-square input accepted")
	}
}
