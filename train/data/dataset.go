package data

import (
	"fmt"
	"os"
	"path/filepath"
)

// Dataset is a set of labelled images, read one at a time so that a
// training run holds at most a batch of decoded images beyond what the
// dataset keeps itself.
type Dataset interface {
	// Len is the number of items.
	Len() int
	// Shape is the shape C, H, W of one image as the network takes it.
	Shape() [3]int
	// Classes is the number of classes; labels are in [0, Classes).
	Classes() int
	// Label is item i's class.
	Label(i int) int
	// Image writes item i, preprocessed and normalised, into dst (C·H·W
	// values, CHW order).
	Image(i int, dst []float32) error
	// Fill is the normalised value of a black pixel in channel c, the value
	// the random crop pads with (torchvision's RandomCrop(padding=p) pads
	// the image before normalisation with fill 0).
	Fill(c int) float32
}

// FashionMNISTDir is where Debian's dataset-fashion-mnist package installs
// Fashion-MNIST (Xiao, Rasul and Vollgraf 2017).
const FashionMNISTDir = "/usr/share/datasets/fashion-mnist"

// FashionMNISTInstall is the command that installs FashionMNISTDir.
const FashionMNISTInstall = "apt-get install dataset-fashion-mnist"

// Fashion-MNIST's normalisation, the training fixtures': (pixel/255 − Mean)/Std.
const (
	FashionMean = 0.2860
	FashionStd  = 0.3530
)

// IDXSet is an image set in IDX files: uint8 images (N, H, W), one channel,
// normalised as (pixel/255 − Mean)/Std, and uint8 labels (N).
type IDXSet struct {
	Images    *IDX
	Labels    []uint8
	NClasses  int
	Mean, Std float32
}

// Len implements Dataset.
func (s *IDXSet) Len() int { return s.Images.Dims[0] }

// Shape implements Dataset.
func (s *IDXSet) Shape() [3]int { return [3]int{1, s.Images.Dims[1], s.Images.Dims[2]} }

// Classes implements Dataset.
func (s *IDXSet) Classes() int { return s.NClasses }

// Label implements Dataset.
func (s *IDXSet) Label(i int) int { return int(s.Labels[i]) }

// Fill implements Dataset.
func (s *IDXSet) Fill(int) float32 { return -s.Mean / s.Std }

// Image implements Dataset.
func (s *IDXSet) Image(i int, dst []float32) error {
	per := s.Images.Dims[1] * s.Images.Dims[2]
	if len(dst) != per {
		return fmt.Errorf("image buffer of %d values, want %d", len(dst), per)
	}
	for k, p := range s.Images.Data[i*per : (i+1)*per] {
		dst[k] = (float32(p)/255 - s.Mean) / s.Std
	}
	return nil
}

// IsIDXDir reports whether dir holds MNIST-style IDX files
// (train-images-idx3-ubyte, gzip-compressed or not).
func IsIDXDir(dir string) bool {
	_, err := idxPath(dir, "train-images-idx3-ubyte")
	return err == nil
}

// idxPath finds base.gz or base in dir.
func idxPath(dir, base string) (string, error) {
	for _, p := range []string{filepath.Join(dir, base+".gz"), filepath.Join(dir, base)} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: no such file", filepath.Join(dir, base+".gz"))
}

// LoadFashionMNIST loads the training and test sets of Fashion-MNIST (or of
// any MNIST-style dataset with 10 classes) from the four IDX files in dir
// (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
// t10k-labels-idx1-ubyte, each optionally .gz), keeping the first
// limitTrain and limitTest items (0: all). Images are normalised with
// FashionMean and FashionStd. A missing directory under FashionMNISTDir is
// reported with the command that installs it.
func LoadFashionMNIST(dir string, limitTrain, limitTest int) (train, test *IDXSet, err error) {
	if _, err := os.Stat(dir); err != nil && dir == FashionMNISTDir {
		return nil, nil, fmt.Errorf("Fashion-MNIST is not installed (%s: no such directory): install it with `%s` (Debian), or pass --data DIR with the four IDX files", dir, FashionMNISTInstall)
	}
	if train, err = loadIDXSet(dir, "train", limitTrain); err != nil {
		return nil, nil, err
	}
	if test, err = loadIDXSet(dir, "t10k", limitTest); err != nil {
		return nil, nil, err
	}
	if train.Shape() != test.Shape() {
		return nil, nil, fmt.Errorf("%s: training images are %dx%d, test images %dx%d", dir,
			train.Shape()[1], train.Shape()[2], test.Shape()[1], test.Shape()[2])
	}
	return train, test, nil
}

func loadIDXSet(dir, split string, limit int) (*IDXSet, error) {
	ip, err := idxPath(dir, split+"-images-idx3-ubyte")
	if err != nil {
		return nil, err
	}
	lp, err := idxPath(dir, split+"-labels-idx1-ubyte")
	if err != nil {
		return nil, err
	}
	img, err := ReadIDXFile(ip, 3, limit)
	if err != nil {
		return nil, err
	}
	lab, err := ReadIDXFile(lp, 1, limit)
	if err != nil {
		return nil, err
	}
	if img.Total != lab.Total {
		return nil, fmt.Errorf("%s holds %d images but %s %d labels", ip, img.Total, lp, lab.Total)
	}
	const classes = 10
	for i, l := range lab.Data {
		if int(l) >= classes {
			return nil, fmt.Errorf("%s: label %d of item %d is outside [0, %d)", lp, l, i, classes)
		}
	}
	return &IDXSet{Images: img, Labels: lab.Data, NClasses: classes, Mean: FashionMean, Std: FashionStd}, nil
}
