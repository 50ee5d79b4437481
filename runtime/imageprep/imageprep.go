// Package imageprep implements timm's evaluation preprocessing for the
// Inception networks: decode (JPEG or PNG), resize the shorter side to
// floor(size / crop_pct) with bicubic interpolation, center-crop size × size,
// scale to [0, 1] and normalize per channel with (x − mean) / std, giving a
// float32 CHW tensor in RGB order.
//
// The resize follows Pillow's Image.resize(BICUBIC) as torchvision's Resize
// uses it on PIL images: a separable convolution with the Keys cubic kernel
// (a = −0.5) whose support is widened by the scale factor when shrinking
// (antialiasing), horizontal pass first, each pass rounded and clamped to
// 8 bits as Pillow stores intermediate images. Results match Pillow to within
// a unit of the last 8-bit place.
package imageprep

import (
	"bytes"
	"fmt"
	"image"
	_ "image/jpeg" // register the JPEG decoder
	_ "image/png"  // register the PNG decoder
	"io"
	"math"
	"os"
)

// Config is the preprocessing of one network.
type Config struct {
	Size    int        // crop size, e.g. 299
	CropPct float64    // e.g. 0.875 (Inception-v4), 0.8975 (Inception-ResNet-v2)
	Mean    [3]float64 // per channel, RGB
	Std     [3]float64
}

// Inception is the timm configuration of inception_v4.tf_in1k.
var Inception = Config{Size: 299, CropPct: 0.875, Mean: [3]float64{0.5, 0.5, 0.5}, Std: [3]float64{0.5, 0.5, 0.5}}

// LoadFile decodes an image file and preprocesses it into a [3, Size, Size]
// float32 tensor (returned row-major).
func LoadFile(path string, c Config) ([]float32, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	x, err := Load(f, c)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return x, nil
}

// Image size limits. A few kilobytes of PNG or JPEG can declare an image of
// gigapixels (issue 11: a 3 KB PNG of 1,000,000×1 pixels took 6.2 GB), so
// Load reads the header first (image.DecodeConfig) and refuses an image
// with a side over MaxSide or more than MaxPixels pixels before decoding
// it; Preprocess refuses a resize whose intermediate images would exceed
// MaxPixels (a long thin image is scaled up along its long side).
const (
	MaxSide   = 32768
	MaxPixels = 64 << 20
)

// CheckSize returns an error if a w×h image exceeds MaxSide or MaxPixels.
func CheckSize(w, h int) error {
	if w > MaxSide || h > MaxSide {
		return fmt.Errorf("image is %dx%d pixels: a side over the limit of %d", w, h, MaxSide)
	}
	if int64(w)*int64(h) > MaxPixels {
		return fmt.Errorf("image is %dx%d pixels (%.1f Mpixel): over the limit of %d Mpixel", w, h, float64(w)*float64(h)/(1<<20), MaxPixels>>20)
	}
	return nil
}

// Load decodes an image (JPEG or PNG) from r and preprocesses it. The
// header is read and checked (CheckSize) before the pixels are decoded.
func Load(r io.Reader, c Config) ([]float32, error) {
	var head bytes.Buffer
	cfg, _, err := image.DecodeConfig(io.TeeReader(r, &head))
	if err != nil {
		return nil, fmt.Errorf("cannot decode image (JPEG and PNG are supported): %v", err)
	}
	if err := CheckSize(cfg.Width, cfg.Height); err != nil {
		return nil, err
	}
	img, format, err := image.Decode(io.MultiReader(&head, r))
	if err != nil {
		return nil, fmt.Errorf("cannot decode image (JPEG and PNG are supported): %v", err)
	}
	_ = format
	return Preprocess(img, c)
}

// Preprocess resizes, crops and normalizes img.
func Preprocess(img image.Image, c Config) ([]float32, error) {
	if c.Size <= 0 || c.CropPct <= 0 || c.CropPct > 1 {
		return nil, fmt.Errorf("bad preprocessing config: size %d, crop_pct %g", c.Size, c.CropPct)
	}
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	if w <= 0 || h <= 0 {
		return nil, fmt.Errorf("empty image")
	}
	// timm: scale_size = floor(img_size / crop_pct); torchvision Resize(int)
	// maps the shorter side to it and the longer one to int(size*long/short).
	short := int(math.Floor(float64(c.Size) / c.CropPct))
	var nw, nh int
	if w <= h {
		nw, nh = short, int(float64(short)*float64(h)/float64(w))
	} else {
		nh, nw = short, int(float64(short)*float64(w)/float64(h))
	}
	if int64(nw)*int64(h) > MaxPixels || int64(nw)*int64(nh) > MaxPixels {
		return nil, fmt.Errorf("image %dx%d resizes to %dx%d: over the limit of %d Mpixel (aspect ratio too extreme)", w, h, nw, nh, MaxPixels>>20)
	}
	if nw < c.Size || nh < c.Size {
		return nil, fmt.Errorf("resized image %dx%d is smaller than the %d crop", nw, nh, c.Size)
	}
	src := toRGB(img)
	tmp := resample(src, w, h, nw, h, true)
	dst := resample(tmp, nw, h, nw, nh, false)
	top := int(math.Round(float64(nh-c.Size) / 2))
	left := int(math.Round(float64(nw-c.Size) / 2))
	out := make([]float32, 3*c.Size*c.Size)
	for ch := 0; ch < 3; ch++ {
		for y := 0; y < c.Size; y++ {
			for x := 0; x < c.Size; x++ {
				v := float64(dst[((top+y)*nw+left+x)*3+ch]) / 255
				out[(ch*c.Size+y)*c.Size+x] = float32((v - c.Mean[ch]) / c.Std[ch])
			}
		}
	}
	return out, nil
}

// toRGB converts any image to packed 8-bit RGB.
func toRGB(img image.Image) []uint8 {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	out := make([]uint8, w*h*3)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			r, g, bl, _ := img.At(b.Min.X+x, b.Min.Y+y).RGBA()
			i := (y*w + x) * 3
			out[i], out[i+1], out[i+2] = uint8(r>>8), uint8(g>>8), uint8(bl>>8)
		}
	}
	return out
}

// cubic is the Keys kernel with a = -0.5 (Pillow's bicubic filter).
func cubic(x float64) float64 {
	const a = -0.5
	x = math.Abs(x)
	switch {
	case x < 1:
		return ((a+2)*x-(a+3))*x*x + 1
	case x < 2:
		return (((x-5)*x+8)*x - 4) * a
	}
	return 0
}

// resample resizes packed RGB along one axis (horizontal when horiz) from
// (w, h) to (nw, nh), Pillow style: for output index i the source center is
// (i + 0.5) * scale, the kernel support is 2 * max(scale, 1), weights are
// normalized to sum 1, and results are rounded and clamped to 8 bits.
func resample(src []uint8, w, h, nw, nh int, horiz bool) []uint8 {
	in, out := h, nh
	if horiz {
		in, out = w, nw
	}
	scale := float64(in) / float64(out)
	fs := math.Max(scale, 1)
	support := 2 * fs
	type tap struct {
		lo int
		w  []float64
	}
	taps := make([]tap, out)
	for i := range taps {
		center := (float64(i) + 0.5) * scale
		lo := int(math.Max(center-support+0.5, 0))
		hi := int(math.Min(center+support+0.5, float64(in)))
		ws := make([]float64, hi-lo)
		var sum float64
		for j := lo; j < hi; j++ {
			v := cubic((float64(j) - center + 0.5) / fs)
			ws[j-lo] = v
			sum += v
		}
		if sum != 0 {
			for k := range ws {
				ws[k] /= sum
			}
		}
		taps[i] = tap{lo, ws}
	}
	dst := make([]uint8, nw*nh*3)
	for y := 0; y < nh; y++ {
		for x := 0; x < nw; x++ {
			var t tap
			if horiz {
				t = taps[x]
			} else {
				t = taps[y]
			}
			for c := 0; c < 3; c++ {
				var acc float64
				for k, wt := range t.w {
					var s uint8
					if horiz {
						s = src[(y*w+t.lo+k)*3+c]
					} else {
						s = src[((t.lo+k)*w+x)*3+c]
					}
					acc += wt * float64(s)
				}
				dst[(y*nw+x)*3+c] = clamp8(acc)
			}
		}
	}
	return dst
}

func clamp8(v float64) uint8 {
	v = math.Round(v)
	if v < 0 {
		return 0
	}
	if v > 255 {
		return 255
	}
	return uint8(v)
}
