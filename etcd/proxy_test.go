package etcd_test

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// A proxy is a TCP proxy to an address, whose links can be frozen (what
// they read is held, not passed on, until cleanup), or cut (closed, and
// new ones refused) and then restored.
type proxy struct {
	addr    string
	frozen  atomic.Bool
	isCut   atomic.Bool
	stalled chan struct{} // closed when it first holds back bytes for the address
	stall   sync.Once
	done    chan struct{} // closed at cleanup: held copies end
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
}

func newProxy(t *testing.T, to string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{addr: ln.Addr().String(), stalled: make(chan struct{}), done: make(chan struct{}),
		conns: map[net.Conn]struct{}{}}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		close(p.done)
		ln.Close()
		p.cut()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			if p.isCut.Load() {
				down.Close()
				continue
			}
			up, err := net.Dial("tcp", to)
			if err != nil {
				down.Close()
				continue
			}
			p.mu.Lock()
			p.conns[down], p.conns[up] = struct{}{}, struct{}{}
			p.mu.Unlock()
			wg.Go(func() { p.pipe(up, down, true) })
			wg.Go(func() { p.pipe(down, up, false) })
		}
	})
	return p
}

// freeze holds what every link reads from now on.
func (p *proxy) freeze() { p.frozen.Store(true) }

// cut closes every link and refuses new ones until restore.
func (p *proxy) cut() {
	p.isCut.Store(true)
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// restore lets new links through again.
func (p *proxy) restore() { p.isCut.Store(false) }

// pipe copies from src to dst until either fails, or, frozen, until
// cleanup; the copy toward the address, request, tells of its first stall.
func (p *proxy) pipe(dst, src net.Conn, request bool) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && p.frozen.Load() {
			if request {
				p.stall.Do(func() { close(p.stalled) })
			}
			<-p.done
			return
		}
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
