package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// batchFlag is --batch: one size, or for kiln build and check a
// comma-separated list of distinct sizes (1,8,32), one compiled program per
// size (rt.MultiModel picks the smallest that fits and pads).
type batchFlag struct{ f *netFlags }

func (b batchFlag) String() string {
	if b.f == nil {
		return "1"
	}
	if len(b.f.batches) > 1 {
		return joinInts(b.f.batches)
	}
	return strconv.Itoa(b.f.batch)
}

func (b batchFlag) Set(s string) error {
	var sizes []int
	for _, p := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil {
			return fmt.Errorf("%q is not a batch size (want N or a list such as 1,8,32)", p)
		}
		if n <= 0 {
			return fmt.Errorf("--batch must be positive, got %d", n)
		}
		if slices.Contains(sizes, n) {
			return fmt.Errorf("batch size %d given twice", n)
		}
		sizes = append(sizes, n)
	}
	slices.Sort(sizes)
	b.f.batch = sizes[0]
	b.f.batches = nil
	if len(sizes) > 1 {
		b.f.batches = sizes
	}
	return nil
}

// checkBatches refuses a list of batch sizes for a command that takes one,
// and any size over --max-batch.
func (f *netFlags) checkBatches() error {
	if len(f.batches) > 1 && !f.multiBatch {
		return usagef("--batch %s: this command takes one batch size (kiln build and kiln check take a list); run it once per size", joinInts(f.batches))
	}
	for _, n := range f.batches {
		if f.maxBatch > 0 && n > f.maxBatch {
			return usagef("--batch %d exceeds the limit %d (raise it with --max-batch)", n, f.maxBatch)
		}
	}
	return nil
}

// batchList is the batch sizes given, ascending (one when --batch N).
func (f *netFlags) batchList() []int {
	if len(f.batches) > 1 {
		return slices.Clone(f.batches)
	}
	return []int{f.batch}
}

func joinInts(s []int) string {
	var p []string
	for _, n := range s {
		p = append(p, strconv.Itoa(n))
	}
	return strings.Join(p, ",")
}

// eachBatch wraps a command's run function so that it runs once per batch
// size of --batch (kiln check --batch 1,8,32 checks each program kiln build
// would compile), stopping at the first error.
func eachBatch(f *netFlags, run func(args []string) error) func(args []string) error {
	f.multiBatch = true
	return func(args []string) error {
		for _, b := range f.batchList() {
			f.batch = b
			if err := run(args); err != nil {
				if len(f.batches) > 1 {
					return fmt.Errorf("--batch %d: %w", b, err)
				}
				return err
			}
		}
		return nil
	}
}
