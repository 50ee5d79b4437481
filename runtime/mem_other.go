//go:build !linux

package rt

func adviseHugePages(mem []byte) {}

func dropPages(mem []byte) {}
