//go:build !linux

package rt

func adviseHugePages(mem []byte) {}
