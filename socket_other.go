//go:build !unix

package lmx

import (
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// lockSocketPath checks that no live broker answers at a Unix socket path.
// Without flock(2) two brokers racing for one path are not told apart.
func lockSocketPath(path string) (*os.File, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s: a live broker listens there: %w", path, syscall.EADDRINUSE)
	}
	return nil, nil // (*os.File)(nil).Close is harmless
}
