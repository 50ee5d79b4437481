package serve

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"

	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/runtime/imageprep"
)

// decode reads a request body of the given Content-Type into n samples of
// the network's per-sample input shape:
//
//   - application/x-npy (or application/octet-stream): a float32/float64
//     .npy array of shape [N, sample...] or [sample...] (one sample);
//   - application/json: {"inputs": nested arrays} of the same shapes, or
//     {"inputs": [flat numbers], "shape": [...]};
//   - image/jpeg, image/png: one image, through the artifact's
//     preprocessing (header checked before decoding: imageprep.Load).
//
// Bad input is a 4xx httpError saying what was expected.
func (s *Server) decode(contentType string, body io.Reader) ([]float32, int, error) {
	mt, _, err := mime.ParseMediaType(contentType)
	if contentType == "" {
		err, mt = nil, ""
	}
	if err != nil {
		return nil, 0, errorf(http.StatusUnsupportedMediaType, "Content-Type %q: %v", contentType, err)
	}
	switch mt {
	case "application/x-npy", "application/octet-stream":
		t, err := tensor.ReadNPY(body, "request body")
		if err != nil {
			if isMaxBytes(err) {
				return nil, 0, err
			}
			return nil, 0, errorf(http.StatusBadRequest, "%v", err)
		}
		return s.samples(t.Shape, t.Data)
	case "application/json":
		return s.decodeJSON(body)
	case "image/jpeg", "image/png":
		pp := s.man.Preprocess
		if pp == nil {
			return nil, 0, errorf(http.StatusUnsupportedMediaType, "%s: this network has no image preprocessing (its input is %s per sample); send application/x-npy or application/json",
				mt, tensor.ShapeString(s.sample))
		}
		b, err := io.ReadAll(body)
		if err != nil {
			return nil, 0, err
		}
		x, err := imageprep.Load(bytes.NewReader(b), imageprep.Config{Size: pp.Size, CropPct: pp.CropPct, Mean: pp.Mean, Std: pp.Std})
		if err != nil {
			return nil, 0, errorf(http.StatusBadRequest, "%v", err)
		}
		if len(x) != s.cfg.Model.InRow() {
			return nil, 0, errorf(http.StatusInternalServerError, "the preprocessed image has %d values, the network takes %d", len(x), s.cfg.Model.InRow())
		}
		return x, 1, nil
	default:
		return nil, 0, errorf(http.StatusUnsupportedMediaType, "Content-Type %q: send application/x-npy, application/json, image/jpeg or image/png", contentType)
	}
}

func isMaxBytes(err error) bool {
	var mbe *http.MaxBytesError
	return errors.As(err, &mbe)
}

// samples checks a decoded array's shape: [N, sample...] or [sample...].
func (s *Server) samples(shape []int, data []float32) ([]float32, int, error) {
	n := 0
	switch {
	case equalInts(shape, s.sample):
		n = 1
	case len(shape) == len(s.sample)+1 && equalInts(shape[1:], s.sample) && shape[0] > 0:
		n = shape[0]
	default:
		return nil, 0, errorf(http.StatusBadRequest, "input shape %s: want %s (one sample) or N×%s",
			tensor.ShapeString(shape), tensor.ShapeString(s.sample), tensor.ShapeString(s.sample))
	}
	if n > s.cfg.MaxSamples {
		return nil, 0, errorf(http.StatusRequestEntityTooLarge, "%d samples in one request: at most %d", n, s.cfg.MaxSamples)
	}
	return data, n, nil
}

// decodeJSON reads {"inputs": ..., "shape": [...]}.
func (s *Server) decodeJSON(body io.Reader) ([]float32, int, error) {
	var req struct {
		Inputs json.RawMessage `json:"inputs"`
		Shape  []int           `json:"shape"`
	}
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		if isMaxBytes(err) {
			return nil, 0, err
		}
		return nil, 0, errorf(http.StatusBadRequest, "JSON body: %v (want {\"inputs\": [...]} with nested arrays, or flat with \"shape\")", err)
	}
	if len(req.Inputs) == 0 {
		return nil, 0, errorf(http.StatusBadRequest, "JSON body: no \"inputs\"")
	}
	var data []float32
	shape, err := flatten(req.Inputs, &data, 0)
	if err != nil {
		return nil, 0, errorf(http.StatusBadRequest, "JSON inputs: %v", err)
	}
	if req.Shape != nil {
		if len(shape) != 1 {
			return nil, 0, errorf(http.StatusBadRequest, "JSON inputs: with \"shape\", give a flat array (got %d levels of nesting)", len(shape))
		}
		n := 1
		for _, d := range req.Shape {
			if d <= 0 || n > len(data) {
				return nil, 0, errorf(http.StatusBadRequest, "JSON shape %v: dimensions must be positive and match the data", req.Shape)
			}
			n *= d
		}
		if n != len(data) {
			return nil, 0, errorf(http.StatusBadRequest, "JSON shape %v holds %d values, inputs has %d", req.Shape, n, len(data))
		}
		shape = req.Shape
	}
	return s.samples(shape, data)
}

// maxDepth bounds the nesting of JSON inputs.
const maxDepth = 8

// flatten appends the numbers of a nested JSON array to data and returns
// its shape; the array must be rectangular.
func flatten(raw json.RawMessage, data *[]float32, depth int) ([]int, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("nested deeper than %d", maxDepth)
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '[' {
		var v float64
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, fmt.Errorf("%.20q is not a number", raw)
		}
		*data = append(*data, float32(v))
		return []int{}, nil
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return nil, err
	}
	if len(elems) == 0 {
		return nil, fmt.Errorf("empty array")
	}
	var inner []int
	for i, e := range elems {
		sh, err := flatten(e, data, depth+1)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			inner = sh
		} else if !equalInts(sh, inner) {
			return nil, fmt.Errorf("ragged array: element %d has shape %v, element 0 %v", i, sh, inner)
		}
	}
	return append([]int{len(elems)}, inner...), nil
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
