package tensor

import (
	"errors"
	"math"
	"strings"
	"testing"
)

func TestCheckWeights(t *testing.T) {
	want := []Spec{
		{Name: "conv.weight", Shape: []int{32, 3, 3, 3}},
		{Name: "bn.weight", Shape: []int{32}},
		{Name: "bn.bias", Shape: []int{32}},
		{Name: "bn.running_var", Shape: []int{32}, NonNegative: true},
		{Name: "fc.weight", Shape: []int{10, 32}},
		{Name: "fc.bias", Shape: []int{10}},
		{Name: "other.var", Shape: []int{2}}, // not NonNegative: may be negative
	}
	ok := func() map[string]*Tensor {
		m := map[string]*Tensor{}
		for _, s := range want {
			m[s.Name] = New(s.Shape...)
		}
		m["bn.num_batches_tracked"] = New()
		return m
	}
	withNaN := func(shape []int, i int, v float32) *Tensor {
		x := New(shape...)
		x.Data[i] = v
		return x
	}
	tests := []struct {
		name string
		edit func(m map[string]*Tensor)
		want []string // the exact problem lines, in order
	}{
		{"all fine", func(m map[string]*Tensor) {}, nil},
		{"all at once", func(m map[string]*Tensor) {
			delete(m, "fc.bias")
			delete(m, "bn.bias")
			m["extra.weight"] = New(3, 3)
			m["aaa"] = New()
			m["conv.weight"] = New(32, 3, 3, 1)
			m["bn.weight"] = withNaN([]int{32}, 5, float32(math.NaN()))
			m["fc.weight"] = withNaN([]int{10, 32}, 33, float32(math.Inf(-1)))
		}, []string{
			`missing tensor "bn.bias" (want 32)`,
			`missing tensor "fc.bias" (want 10)`,
			`unexpected tensor "aaa" (scalar)`,
			`unexpected tensor "extra.weight" (3x3)`,
			`tensor "conv.weight" has shape 32x3x3x1, want 32x3x3x3`,
			`tensor "bn.weight" has non-finite value NaN at index 5 [5]`,
			`tensor "fc.weight" has non-finite value -Inf at index 33 [1,1]`,
		}},
		{"nil and bad data", func(m map[string]*Tensor) {
			m["fc.bias"] = nil
			m["bn.bias"] = &Tensor{Shape: []int{32}, Data: make([]float32, 31)}
			m["bn.bias"].Data[30] = float32(math.Inf(1))
		}, []string{
			`tensor "bn.bias" has 31 values for shape 32`,
			`tensor "fc.bias" is nil`,
			`tensor "bn.bias" has non-finite value +Inf at index 30`,
		}},
		// Issue 11: a negative running_var passed the check and gave
		// all-NaN logits with exit 0.
		{"negative variance", func(m map[string]*Tensor) {
			m["bn.running_var"] = withNaN([]int{32}, 7, -0.5)
			m["other.var"] = withNaN([]int{2}, 0, -3)
		}, []string{
			`tensor "bn.running_var" (a BatchNorm running variance) has negative value -0.5 at index 7 [7]`,
		}},
		{"NaN variance", func(m map[string]*Tensor) {
			m["bn.running_var"] = withNaN([]int{32}, 3, float32(math.NaN()))
		}, []string{
			`tensor "bn.running_var" has non-finite value NaN at index 3 [3]`,
		}},
		{"zero variance is fine", func(m map[string]*Tensor) {
			m["bn.running_var"] = New(32)
		}, nil},
		{"mis-shaped and NaN", func(m map[string]*Tensor) {
			m["fc.weight"] = withNaN([]int{32, 10}, 0, float32(math.NaN()))
		}, []string{
			`tensor "fc.weight" has shape 32x10, want 10x32`,
			`tensor "fc.weight" has non-finite value NaN at index 0 [0,0]`,
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := ok()
			tc.edit(m)
			err := CheckWeights("w.safetensors", want, m)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var we *WeightsError
			if !errors.As(err, &we) {
				t.Fatalf("err = %v, want *WeightsError", err)
			}
			if strings.Join(we.Problems, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(we.Problems, "\n"), strings.Join(tc.want, "\n"))
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "weights w.safetensors: ") || strings.Count(msg, "\n") != len(tc.want) {
				t.Errorf("message %q", msg)
			}
			// Deterministic: same input, same message.
			for i := 0; i < 5; i++ {
				if again := CheckWeights("w.safetensors", want, m); again.Error() != msg {
					t.Fatalf("message changed:\n%s\nvs\n%s", again, msg)
				}
			}
		})
	}
}

func TestCheckWeightsDuplicateSpec(t *testing.T) {
	err := CheckWeights("f", []Spec{{Name: "a", Shape: []int{1}}, {Name: "a", Shape: []int{1}}}, map[string]*Tensor{"a": New(1)})
	wantErrContains(t, err, `weights f: 1 problem:`, `tensor "a" listed more than once`)
	if err := CheckWeights("f", nil, nil); err != nil {
		t.Errorf("empty sets: %v", err)
	}
}
