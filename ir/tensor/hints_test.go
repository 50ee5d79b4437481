package tensor

import (
	"archive/zip"
	"bytes"
	"strings"
	"testing"
)

// torchZip builds a file laid out like torch.save's zip format: an
// uncompressed zip archive whose first entry is ARCHIVE/data.pkl.
func torchZip(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	w := zip.NewWriter(&b)
	for _, name := range []string{"model/data.pkl", "model/byteorder", "model/data/0", "model/version"} {
		f, err := w.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Store})
		if err != nil {
			t.Fatal(err)
		}
		f.Write([]byte("\x80\x02}q\x00."))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func plainZip(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	w := zip.NewWriter(&b)
	f, _ := w.Create("arr_0.npy")
	f.Write([]byte("\x93NUMPY"))
	w.Close()
	return b.Bytes()
}

// TestReadSafetensorsRecognisesOtherFormats: a file in a format commonly
// mistaken for safetensors gets an error that names the format and says how
// to convert it, instead of a nonsensical header length. Issue 10: a .pt
// file gave "header length 578712552184433488 exceeds the limit".
func TestReadSafetensorsRecognisesOtherFormats(t *testing.T) {
	const torch = "this is a PyTorch checkpoint"
	const save = "save it with safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"
	tests := []struct {
		name string
		data []byte
		want []string
	}{
		{"torch.save zip", torchZip(t), []string{torch + " (torch.save's zip format), not safetensors: " + save}},
		{"torch.save legacy pickle", []byte("\x80\x02\x8a\x0alz\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.\x80\x02}q\x00"), []string{torch + " (a pickle", save}},
		{"pickle protocol 4", []byte("\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94."), []string{torch, save}},
		{"npz", plainZip(t), []string{"this is a zip archive", "not safetensors"}},
		{"npy", []byte("\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }"), []string{"this is a NumPy .npy array, not safetensors"}},
		{"hdf5", []byte("\x89HDF\r\n\x1a\n\x00\x00\x00\x00\x00\x08\x08\x00"), []string{"this is an HDF5 file"}},
		// Not recognised: the usual safetensors checks apply.
		{"garbage", []byte("\xff\xff\xff\xff\xff\xff\xff\xff{}"), []string{"header length"}},
		{"short", []byte("PK"), []string{"truncated"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadSafetensors(bytes.NewReader(tc.data), int64(len(tc.data)), "model.pt")
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if !strings.HasPrefix(err.Error(), "read safetensors model.pt: ") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
	// A valid safetensors file whose header length happens to start with the
	// bytes "PK" or 0x80 is still read: byte 8 is '{'.
	var b bytes.Buffer
	if err := WriteSafetensors(&b, map[string]*Tensor{"w": New(2)}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSafetensors(bytes.NewReader(b.Bytes()), int64(b.Len()), "ok.safetensors"); err != nil {
		t.Fatal(err)
	}
	if got := sniffFormat(append([]byte("\x80\x02\x00\x00\x00\x00\x00\x00"), b.Bytes()[8:]...)); got != "" {
		t.Errorf("safetensors with header length 0x280 taken for %q", got)
	}
}

func TestPrefixHint(t *testing.T) {
	want := []string{"conv1.weight", "bn1.weight", "bn1.bias", "fc.weight", "fc.bias"}
	prefixed := func(p string, names []string) []string {
		var out []string
		for _, n := range names {
			out = append(out, p+n)
		}
		return out
	}
	tests := []struct {
		name    string
		names   []string
		prefix  string
		matched int
	}{
		{"DataParallel", prefixed("module.", want), "module.", 5},
		{"wrapped model", prefixed("model.", want), "model.", 5},
		{"nested twice", prefixed("model.backbone.", want), "model.backbone.", 5},
		{"extra keys kept", append(prefixed("module.", want), "module.num_batches_tracked", "head.extra"), "module.", 5},
		{"some keys prefixed", append(prefixed("module.", want[:3]), want[3:]...), "module.", 5},
		{"no prefix", want, "", 5},
		{"unrelated", []string{"a.b", "c.d"}, "", 0},
		// A prefix that the network's own names share is not offered: it
		// would only make things worse.
		{"prefix of names", []string{"fc.weight"}, "", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, n := PrefixHint(tc.names, want)
			if p != tc.prefix || n != tc.matched {
				t.Errorf("PrefixHint = %q, %d; want %q, %d", p, n, tc.prefix, tc.matched)
			}
		})
	}
}

func TestStripPrefix(t *testing.T) {
	ts := map[string]*Tensor{"module.a": New(1), "module.b": New(2), "c": New(3)}
	got, err := StripPrefix("w.safetensors", ts, "module.")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got["a"] == nil || got["b"] == nil || got["c"] == nil {
		t.Errorf("StripPrefix: %v", got)
	}
	ts["a"] = New(1)
	if _, err := StripPrefix("w.safetensors", ts, "module."); err == nil || !strings.Contains(err.Error(), `"a" and "module.a" the same name "a"`) {
		t.Errorf("collision: %v", err)
	}
}
