package data

import (
	"fmt"
	"image"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kiln-dev/kiln/runtime/imageprep"
)

// MaxImagePixels bounds the size of one image of an image folder (64
// megapixels): larger images are rejected from their header, before they
// are decoded.
const MaxImagePixels = 1 << 26

// Folder is a folder of images with one subdirectory per class
// (torchvision's ImageFolder): classes are the subdirectory names in sorted
// order, items the .jpg, .jpeg and .png files in them (other files are
// ignored), in sorted order. Images are decoded when read, so memory stays
// bounded by one batch.
//
// Preprocessing is the network's, timm's Inception evaluation transform
// (runtime/imageprep): resize the shorter side to floor(H/crop_pct) with
// Pillow's bicubic filter, centre-crop H×W (H = W required), scale to [0, 1]
// and normalise with mean and std 0.5 per channel. A network with one input
// channel gets the mean of the three normalised channels (equal mean and
// std make this the normalised mean of R, G and B).
type Folder struct {
	Dir        string
	ClassNames []string
	Paths      []string
	Labels     []int
	shape      [3]int
	prep       imageprep.Config
}

// LoadFolder lists dir (one subdirectory per class) for a network taking
// images of shape (C, H, W), C 1 or 3 and H = W. classes, when not nil, are
// the class names the set must have (a test set must match its training
// set).
func LoadFolder(dir string, shape [3]int, classes []string) (*Folder, error) {
	if shape[0] != 1 && shape[0] != 3 || shape[1] != shape[2] {
		return nil, fmt.Errorf("%s: image folders need a network input of 1 or 3 channels and a square image, not %dx%dx%d", dir, shape[0], shape[1], shape[2])
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	f := &Folder{Dir: dir, shape: shape, prep: imageprep.Inception}
	f.prep.Size = shape[1]
	for _, e := range ents {
		if e.IsDir() {
			f.ClassNames = append(f.ClassNames, e.Name())
		}
	}
	sort.Strings(f.ClassNames)
	if len(f.ClassNames) == 0 {
		return nil, fmt.Errorf("%s: no class subdirectories", dir)
	}
	if classes != nil && strings.Join(classes, "\x00") != strings.Join(f.ClassNames, "\x00") {
		return nil, fmt.Errorf("%s: classes %s differ from the training set's %s", dir, strings.Join(f.ClassNames, ", "), strings.Join(classes, ", "))
	}
	for label, c := range f.ClassNames {
		files, err := os.ReadDir(filepath.Join(dir, c))
		if err != nil {
			return nil, err
		}
		n := 0
		for _, e := range files {
			switch strings.ToLower(filepath.Ext(e.Name())) {
			case ".jpg", ".jpeg", ".png":
				if e.Type().IsRegular() || e.Type()&os.ModeSymlink != 0 {
					f.Paths = append(f.Paths, filepath.Join(dir, c, e.Name()))
					f.Labels = append(f.Labels, label)
					n++
				}
			}
		}
		if n == 0 {
			return nil, fmt.Errorf("%s: class %q has no .jpg, .jpeg or .png files", dir, c)
		}
	}
	return f, nil
}

// Len implements Dataset.
func (f *Folder) Len() int { return len(f.Paths) }

// Shape implements Dataset.
func (f *Folder) Shape() [3]int { return f.shape }

// Classes implements Dataset.
func (f *Folder) Classes() int { return len(f.ClassNames) }

// Label implements Dataset.
func (f *Folder) Label(i int) int { return f.Labels[i] }

// Fill implements Dataset: black, (0 − 0.5)/0.5.
func (f *Folder) Fill(c int) float32 { return float32(-f.prep.Mean[c%3] / f.prep.Std[c%3]) }

// Image implements Dataset: decode (after checking the header's size),
// then preprocess.
func (f *Folder) Image(i int, dst []float32) error {
	path := f.Paths[i]
	fh, err := os.Open(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	cfg, _, err := image.DecodeConfig(fh)
	if err != nil {
		return fmt.Errorf("%s: cannot decode image (JPEG and PNG are supported): %v", path, err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 || cfg.Width > MaxImagePixels/max(cfg.Height, 1) {
		return fmt.Errorf("%s: image of %dx%d pixels; at most %d pixels are accepted", path, cfg.Width, cfg.Height, MaxImagePixels)
	}
	if _, err := fh.Seek(0, 0); err != nil {
		return err
	}
	x, err := imageprep.Load(fh, f.prep)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	hw := f.shape[1] * f.shape[2]
	if len(dst) != f.shape[0]*hw {
		return fmt.Errorf("image buffer of %d values, want %d", len(dst), f.shape[0]*hw)
	}
	if f.shape[0] == 3 {
		copy(dst, x)
		return nil
	}
	for k := range hw {
		dst[k] = (x[k] + x[hw+k] + x[2*hw+k]) / 3
	}
	return nil
}
