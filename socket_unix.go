//go:build unix

package lmx

import (
	"fmt"
	"os"
	"syscall"
)

// lockSocketPath takes the lock file of a Unix socket path, failing if a live
// broker holds it.
func lockSocketPath(path string) (*os.File, error) {
	f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if err == syscall.EWOULDBLOCK {
			return nil, fmt.Errorf("%s: a live broker listens there: %w", path, syscall.EADDRINUSE)
		}
		return nil, err
	}
	return f, nil
}
