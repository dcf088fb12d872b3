package chaos

import (
	"net"
	"sync"
)

// A proxy forwards TCP connections to the broker and injects the network's
// faults: Cut closes every connection through it, Stall stops forwarding
// both ways (and connecting) until Resume.
type proxy struct {
	l      net.Listener
	target string

	mu      sync.Mutex
	conns   map[net.Conn]struct{} // both ends of every connection; guarded by mu
	stalled chan struct{}         // closed on Resume; nil when not stalled; guarded by mu
	wg      sync.WaitGroup
}

func newProxy(target string) (*proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{l: l, target: target, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

func (p *proxy) addr() string { return p.l.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		down, err := p.l.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.wait()
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				down.Close()
				return
			}
			if !p.track(down, up) {
				return
			}
			var both sync.WaitGroup
			both.Add(2)
			go func() { defer both.Done(); p.copy(up, down) }()
			go func() { defer both.Done(); p.copy(down, up) }()
			both.Wait()
			p.untrack(down, up)
		}()
	}
}

func (p *proxy) track(a, b net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil { // closed
		a.Close()
		b.Close()
		return false
	}
	p.conns[a], p.conns[b] = struct{}{}, struct{}{}
	return true
}

func (p *proxy) untrack(a, b net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, a)
	delete(p.conns, b)
}

// copy forwards src to dst, holding each chunk while the proxy is stalled.
func (p *proxy) copy(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.wait()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// wait returns once the proxy is not stalled.
func (p *proxy) wait() {
	p.mu.Lock()
	ch := p.stalled
	p.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

// cut closes every connection through the proxy and returns how many
// client connections it cut.
func (p *proxy) cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	return len(p.conns) / 2
}

// stall stops forwarding until resume.
func (p *proxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stalled == nil {
		p.stalled = make(chan struct{})
	}
}

func (p *proxy) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stalled != nil {
		close(p.stalled)
		p.stalled = nil
	}
}

// close stops the proxy and every connection through it.
func (p *proxy) close() {
	p.l.Close()
	p.resume()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}
