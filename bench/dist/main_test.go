package main

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseNets(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []netSpec
		err  string
	}{
		{"mini_inception:8", []netSpec{{"mini_inception", 8, nil}}, ""},
		{"mini_inception:8, inception_v4:2:3x299x299", []netSpec{{"mini_inception", 8, nil}, {"inception_v4", 2, []int{3, 299, 299}}}, ""},
		{"mini_inception", nil, "want NAME:BATCH"},
		{"mini_inception:0", nil, "not a positive integer"},
		{":8", nil, "want NAME:BATCH"},
		{"x:2:3x299", nil, "want CxHxW"},
		{"x:2:3xax2", nil, "want CxHxW"},
	} {
		got, err := parseNets(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseNets(%q): error %v, want one containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseNets(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		// String is parseNets' inverse (the launcher passes it to the workers).
		for _, s := range got {
			back, err := parseNets(s.String())
			if err != nil || !reflect.DeepEqual(back, []netSpec{s}) {
				t.Errorf("parseNets(%q) = %v, %v; want %v", s.String(), back, err, s)
			}
		}
	}
}

func TestSweepSizes(t *testing.T) {
	for _, tc := range []struct {
		max  int
		want []int
	}{
		{1000000, []int{1024, 16384, 262144, 1000000}},
		{42700000, []int{1024, 16384, 262144, 4194304, 42700000}},
		{1024, []int{1024}},
		{100, []int{100}},
	} {
		if got := sweepSizes(tc.max); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("sweepSizes(%d) = %v, want %v", tc.max, got, tc.want)
		}
	}
}

func TestFits(t *testing.T) {
	for _, tc := range []struct {
		np, perRank, avail int
		want               bool
	}{
		{4, 4600, 15000, false}, // four Inception-v4 ranks on 15 GiB
		{2, 4600, 15000, true},
		{4, 4600, 20240, true}, // 4·4600·1.1 = 20240
		{4, 4600, 20239, false},
		{4, 0, 100, true},  // no previous run
		{4, 4600, 0, true}, // /proc/meminfo unreadable
	} {
		if got := fits(tc.np, tc.perRank, tc.avail); got != tc.want {
			t.Errorf("fits(%d, %d, %d) = %v, want %v", tc.np, tc.perRank, tc.avail, got, tc.want)
		}
	}
}
