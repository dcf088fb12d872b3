// Package redistest starts redis-server children for the Redis module's
// tests: the Debian package's binary, bound to 127.0.0.1.
package redistest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// A Server is a redis-server child.
type Server struct {
	Addr string // host:port
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
}

// Start starts a redis-server on addr (127.0.0.1:0 for a free port) and
// waits, 10 s at most, until it answers. With dir "" it keeps nothing;
// otherwise it keeps its data in dir as an append-only file synced on
// every write, so that a redis-server killed and started again on dir
// finds every lock. The child is killed with the calling thread's process:
// a caller that may be killed itself first locks its goroutine to its
// thread (runtime.LockOSThread) and keeps it.
func Start(addr, dir string) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server is not installed (apt-get install redis-server): %w", err)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if port == "0" {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, err
		}
		port = strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
		l.Close()
	}
	args := []string{"--bind", host, "--port", port, "--save", "", "--daemonize", "no", "--loglevel", "warning"}
	if dir == "" {
		args = append(args, "--appendonly", "no")
	} else {
		args = append(args, "--dir", dir, "--appendonly", "yes", "--appendfsync", "always")
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &Server{Addr: net.JoinHostPort(host, port), cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(s.done)
	}()
	rdb := goredis.NewClient(&goredis.Options{Addr: s.Addr, MaxRetries: -1})
	defer rdb.Close()
	for deadline := time.Now().Add(10 * time.Second); ; {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := rdb.Ping(ctx).Err()
		cancel()
		if err == nil {
			return s, nil
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("redis-server exited: %w", err)
		default:
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("redis-server did not answer: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server and waits for it to exit.
func (s *Server) Stop() {
	s.cmd.Process.Kill()
	<-s.done
}
