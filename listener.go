package lmx

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// server is the broker's network door: its listeners, its sessions and every
// goroutine they run.
type server struct {
	mu        sync.Mutex
	listeners map[net.Listener]struct{} // guarded by mu
	sessions  map[*conn]struct{}        // guarded by mu
	closing   bool                      // guarded by mu
	g         group                     // every goroutine of the door
	ends      endLog                    // logs the sessions' ends
}

// Listen listens on network ("tcp", "tcp4", "tcp6" or "unix") at address and
// serves the broker's lock table there in the background, to clients made by
// Dial. It returns the address it listens on (with the port chosen, for
// "127.0.0.1:0").
//
// A Unix socket gets the mode of WithSocketMode (0600 by default). A socket
// file left by a broker that died is replaced; one a live broker listens on
// is not. TCP is served with TLS when the broker has WithTLS.
func (b *Broker) Listen(network, address string) (net.Addr, error) {
	return b.listen(network, address, "listen", b.cfg.tlsConfig, b.ServeConn)
}

// listen listens on network at address, with TLS on TCP when tlsConfig is
// set, and serves the connections it accepts with serveConn in the
// background. what names the door in errors and logs.
func (b *Broker) listen(network, address, what string, tlsConfig *tls.Config, serveConn func(net.Conn)) (net.Addr, error) {
	var l net.Listener
	var err error
	switch network {
	case "unix":
		l, err = listenUnix(address, b.cfg.socketMode)
	case "tcp", "tcp4", "tcp6":
		l, err = net.Listen(network, address)
		if err == nil && tlsConfig != nil {
			l = tls.NewListener(l, tlsConfig)
		}
	default:
		return nil, fmt.Errorf("lmx: %s: unsupported network %q", what, network)
	}
	if err != nil {
		return nil, fmt.Errorf("lmx: %s: %w", what, err)
	}
	if !b.srv.track(l) {
		l.Close()
		return nil, ErrClosed
	}
	b.srv.g.start(func() { b.serve(l, what, serveConn) })
	return l.Addr(), nil
}

// Serve serves the broker's lock table on connections accepted from l, until
// l fails or the broker shuts down; then it returns ErrClosed. The caller
// owns l; Shutdown and Close close it.
func (b *Broker) Serve(l net.Listener) error {
	if !b.srv.track(l) {
		return ErrClosed
	}
	return b.serve(l, "listen", b.ServeConn)
}

// serve accepts connections from l, a tracked listener, and serves each
// with serveConn, until l fails or the broker shuts down.
func (b *Broker) serve(l net.Listener, what string, serveConn func(net.Conn)) error {
	defer b.srv.untrack(l)
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if b.srv.isClosing() {
				return ErrClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors, say: wait, rather than spin.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			b.cfg.logger.Warn("lmx: "+what+": accept", "addr", l.Addr().String(), "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		serveConn(nc)
	}
}

// ServeConn serves one connection, already accepted, in the background: the
// way to serve a transport of the caller's own, or one end of net.Pipe.
func (b *Broker) ServeConn(nc net.Conn) {
	newSession(b, nc).serve()
}

func (s *server) track(l net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	if s.listeners == nil {
		s.listeners = make(map[net.Listener]struct{})
	}
	s.listeners[l] = struct{}{}
	return true
}

func (s *server) untrack(l net.Listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.listeners, l)
}

func (s *server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// addSession registers sess, unless the server is closing or full.
func (s *server) addSession(sess *conn, limit int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return ErrClosed
	}
	if len(s.sessions) >= limit {
		return fmt.Errorf("%w: %d sessions open, the limit", ErrBusy, len(s.sessions))
	}
	if s.sessions == nil {
		s.sessions = make(map[*conn]struct{})
	}
	s.sessions[sess] = struct{}{}
	return nil
}

func (s *server) removeSession(sess *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sessions, sess)
}

func (s *server) sessionCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// stop closes the listeners and stops new sessions and goroutines, and
// returns the sessions open.
func (s *server) stop() []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing = true
	s.g.close()
	for l := range s.listeners {
		l.Close()
	}
	sessions := make([]*conn, 0, len(s.sessions))
	for sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	return sessions
}

// Shutdown stops the broker gracefully: it stops accepting connections,
// answers every queued remote Lock with ErrClosed, sends what each session
// has to send, ends the sessions, waits for their goroutines, and then
// closes the broker as Close does. If ctx ends first, it closes the broker
// at once and returns ctx.Err().
func (b *Broker) Shutdown(ctx context.Context) error {
	for _, s := range b.srv.stop() {
		s.shutdown()
	}
	done := make(chan struct{})
	go func() {
		b.srv.g.wait()
		close(done)
	}()
	select {
	case <-done:
		return b.Close()
	case <-ctx.Done():
		b.Close()
		return ctx.Err()
	}
}

// closeNetwork closes listeners and connections and waits for the door's
// goroutines.
func (b *Broker) closeNetwork() {
	for _, s := range b.srv.stop() {
		s.nc.Close()
	}
	b.srv.g.wait()
}

// listenUnix listens on a Unix socket at path. A lock file beside it, held
// for the listener's life, tells a live broker from a dead one: the kernel
// drops the lock when its process dies, so a socket file whose lock is free
// is stale and is replaced, and two brokers racing for one path cannot both
// win.
func listenUnix(path string, mode os.FileMode) (net.Listener, error) {
	lock, err := lockSocketPath(path)
	if err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			lock.Close()
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		os.Remove(path) // stale: its broker no longer holds the lock
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		lock.Close()
		return nil, err
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		lock.Close()
		return nil, err
	}
	return &unixListener{Listener: l, lock: lock}, nil
}

// unixListener releases the socket's lock file when it closes.
type unixListener struct {
	net.Listener
	lock *os.File
	once sync.Once
}

func (l *unixListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { l.lock.Close() })
	return err
}
