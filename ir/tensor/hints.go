package tensor

import (
	"bytes"
	"fmt"
	"strings"
)

// saveHint is how to turn a PyTorch model into a file Kiln reads.
const saveHint = "save it with safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"

// sniffFormat names the format of a weight file that is not safetensors,
// from its first bytes, with what to do about it; "" when head could be a
// safetensors file or the format is not recognised.
//
// A safetensors file starts with an 8-byte little-endian header length
// followed by the JSON header, so its byte 8 is '{' (the reference
// implementation rejects anything else). The formats recognised otherwise:
//
//   - torch.save's default (since PyTorch 1.6) is a zip archive: it starts
//     with a local file header "PK\x03\x04" and holds ARCHIVE/data.pkl, the
//     pickled object (PyTorch's torch/serialization.py, _save);
//   - torch.save's legacy format (_use_new_zipfile_serialization=False) and
//     plain pickles start with the PROTO opcode 0x80 and a protocol number
//     2 to 5 (Python's pickletools);
//   - another zip archive, such as NumPy's .npz;
//   - a NumPy .npy array ("\x93NUMPY", NEP 1);
//   - HDF5 ("\x89HDF\r\n\x1a\n"), as Keras writes.
func sniffFormat(head []byte) string {
	if len(head) > 8 && head[8] == '{' {
		return ""
	}
	switch {
	case bytes.HasPrefix(head, []byte("PK\x03\x04")):
		if bytes.Contains(head, []byte("data.pkl")) {
			return "this is a PyTorch checkpoint (torch.save's zip format), not safetensors: " + saveHint
		}
		return "this is a zip archive (a PyTorch checkpoint or NumPy .npz?), not safetensors: " + saveHint +
			", or with safetensors.numpy.save_file"
	case len(head) >= 2 && head[0] == 0x80 && head[1] >= 2 && head[1] <= 5:
		return "this is a PyTorch checkpoint (a pickle, torch.save's legacy format), not safetensors: " + saveHint
	case bytes.HasPrefix(head, []byte("\x93NUMPY")):
		return "this is a NumPy .npy array, not safetensors: save the arrays with safetensors.numpy.save_file({'name': array, ...}, 'model.safetensors')"
	case bytes.HasPrefix(head, []byte("\x89HDF\r\n\x1a\n")):
		return "this is an HDF5 file (Keras?), not safetensors: save the weights with safetensors (safetensors.numpy.save_file or safetensors.tensorflow.save_file)"
	}
	return ""
}

// sniffLen is how many leading bytes sniffFormat looks at: enough for the
// name of the first entry of a zip archive (torch.save writes data.pkl
// first).
const sniffLen = 512

// StripPrefix returns the tensors with prefix removed from every name that
// starts with it (names that do not are kept as they are), and an error
// naming file if two names become the same.
func StripPrefix(file string, ts map[string]*Tensor, prefix string) (map[string]*Tensor, error) {
	if prefix == "" {
		return ts, nil
	}
	out := make(map[string]*Tensor, len(ts))
	from := make(map[string]string, len(ts))
	for name, t := range ts {
		short := strings.TrimPrefix(name, prefix)
		if prev, dup := from[short]; dup {
			a, b := prev, name
			if a > b {
				a, b = b, a
			}
			return nil, fmt.Errorf("weights %s: --strip-prefix %q makes %q and %q the same name %q", file, prefix, a, b, short)
		}
		from[short] = name
		out[short] = t
	}
	return out, nil
}

// PrefixHint looks for a prefix on the checkpoint's names that keeps them
// from matching the wanted names, as in a state dict saved from a
// DataParallel wrapper ("module.") or from a model held in another
// ("model."). It returns the prefix that, stripped from every name that has
// it, makes the most wanted names match, and how many then match; "" when no
// prefix improves on the names as they are.
//
// Algorithm: the candidates are every prefix ending in "." of a checkpoint
// name that is a wanted name plus that prefix (so "module.", or
// "model.backbone." when names are nested twice); each candidate is scored
// by the number of wanted names present after stripping it. The longest
// common prefix of all names is thereby found too whenever it helps.
func PrefixHint(names []string, want []string) (prefix string, matched int) {
	wanted := make(map[string]bool, len(want))
	for _, w := range want {
		wanted[w] = true
	}
	have := make(map[string]bool, len(names))
	base := 0
	for _, n := range names {
		have[n] = true
		if wanted[n] {
			base++
		}
	}
	cands := map[string]bool{}
	for _, n := range names {
		for i := 0; i < len(n); i++ {
			if n[i] == '.' && wanted[n[i+1:]] {
				cands[n[:i+1]] = true
			}
		}
	}
	best, bestN := "", base
	for p := range cands {
		got := 0
		for w := range wanted {
			if have[p+w] || (have[w] && !strings.HasPrefix(w, p)) {
				got++
			}
		}
		if got > bestN || got == bestN && best != "" && p < best {
			best, bestN = p, got
		}
	}
	if best == "" {
		return "", base
	}
	return best, bestN
}
