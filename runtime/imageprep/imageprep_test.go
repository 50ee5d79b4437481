package imageprep

import (
	"bytes"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"strings"
	"testing"
)

func gradient(w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.RGBA{uint8(x * 255 / (w - 1)), uint8(y * 255 / (h - 1)), 128, 255})
		}
	}
	return img
}

func TestConstantImage(t *testing.T) {
	// A constant image stays constant through resize and crop: every output
	// equals (v/255 - 0.5)/0.5 exactly.
	img := image.NewRGBA(image.Rect(0, 0, 400, 350))
	for i := range img.Pix {
		img.Pix[i] = 200
	}
	x, err := Preprocess(img, Inception)
	if err != nil {
		t.Fatal(err)
	}
	if len(x) != 3*299*299 {
		t.Fatalf("len %d", len(x))
	}
	want := float32((200.0/255 - 0.5) / 0.5)
	for i, v := range x {
		if v != want {
			t.Fatalf("x[%d] = %v, want %v", i, v, want)
		}
	}
}

func TestGradientGeometry(t *testing.T) {
	// A horizontal red ramp: after resize and center crop the red channel
	// increases left to right, green (vertical ramp) top to bottom, and the
	// crop is centered (middle pixel near the middle value).
	x, err := Preprocess(gradient(640, 480), Inception)
	if err != nil {
		t.Fatal(err)
	}
	at := func(c, y, xx int) float64 { return float64(x[(c*299+y)*299+xx]) }
	if !(at(0, 150, 10) < at(0, 150, 150) && at(0, 150, 150) < at(0, 150, 290)) {
		t.Errorf("red is not increasing left to right")
	}
	if !(at(1, 10, 150) < at(1, 290, 150)) {
		t.Errorf("green is not increasing top to bottom")
	}
	if m := at(0, 149, 149); math.Abs(m) > 0.02 {
		t.Errorf("center red %.3f, want about 0 (mid gray)", m)
	}
}

func TestDecode(t *testing.T) {
	var pngBuf, jpgBuf bytes.Buffer
	if err := png.Encode(&pngBuf, gradient(320, 320)); err != nil {
		t.Fatal(err)
	}
	if err := jpeg.Encode(&jpgBuf, gradient(320, 400), &jpeg.Options{Quality: 95}); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"png": pngBuf.Bytes(), "jpeg": jpgBuf.Bytes()} {
		if _, err := Load(bytes.NewReader(b), Inception); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	_, err := Load(strings.NewReader("not an image"), Inception)
	if err == nil || !strings.Contains(err.Error(), "cannot decode image") {
		t.Errorf("garbage: %v", err)
	}
	_, err = LoadFile("/nonexistent/photo.jpg", Inception)
	if err == nil || !strings.Contains(err.Error(), "photo.jpg") {
		t.Errorf("missing file: %v", err)
	}
}
