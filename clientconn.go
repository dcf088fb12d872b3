package lmx

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
)

// The connection of a Client to the broker: its state, its calls, and the
// dispatch of what the broker sends.

// handshake makes nc, just dialled, a session: TLS if configured, then
// Hello and Welcome.
func (c *Client) handshake(ctx context.Context, nc net.Conn) (*clientConn, error) {
	if c.cfg.tlsConfig != nil && c.network != "unix" {
		cfg := c.cfg.tlsConfig
		if cfg.ServerName == "" {
			cfg = cfg.Clone()
			cfg.ServerName, _, _ = net.SplitHostPort(c.address)
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("lmx: tls: %w", err)
		}
		nc = tc
	}
	cc := &clientConn{
		c:       c,
		nc:      nc,
		out:     outbox{nc: nc},
		in:      inbox{fill: nc.Read},
		bgTurn:  make(chan struct{}, 1),
		kick:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		calls:   make(map[uint32]*call),
		leases:  make(map[ulid.ULID]*Lease),
		succ:    make(map[ulid.ULID]*call),
		watches: make(map[uint32]*watcher),
		gaveUp:  make(map[string]*gaveUp),
	}
	cc.ref.door = cc
	hello := helloMsg{version: protocolVersion, token: c.cfg.token}
	err := cc.out.send(func(b []byte) []byte { return appendHello(b, hello) })
	if err != nil {
		return nil, fmt.Errorf("lmx: handshake: %w", err)
	}
	var hdr [headerLen]byte
	if _, err := io.ReadFull(nc, hdr[:]); err != nil {
		return nil, fmt.Errorf("lmx: handshake: %w", err)
	}
	h := parseHeader(hdr[:])
	if h.length > maxHelloLen {
		return nil, fmt.Errorf("%w: handshake answer of %d bytes", ErrProtocol, h.length)
	}
	p := make([]byte, h.length)
	if _, err := io.ReadFull(nc, p); err != nil {
		return nil, fmt.Errorf("lmx: handshake: %w", err)
	}
	switch h.op {
	case opWelcome:
	case opError:
		return nil, decodeError(h.code, p)
	default:
		return nil, fmt.Errorf("%w: handshake answered with op 0x%02x", ErrProtocol, h.op)
	}
	w, err := decodeWelcome(p)
	if err == nil && w.version != protocolVersion {
		return nil, fmt.Errorf("%w: broker speaks version %d, this client %d", ErrProtocol, w.version, protocolVersion)
	}
	if err != nil || w.heartbeat <= 0 || w.timeout <= 0 {
		return nil, fmt.Errorf("%w: malformed welcome", ErrProtocol)
	}
	cc.session, cc.heartbeatEvery, cc.timeout = w.session, w.heartbeat, w.timeout
	cc.maxFrame = int(min(w.maxFrame, 1<<30))
	cc.maxKeyLen = int(min(w.maxKeyLen, 1<<30))
	cc.in.max = max(cc.maxFrame, 4<<20)
	cc.out.timeout = cc.timeout
	return cc, nil
}

// unwatch ends the watch answering id: the broker is told, the channel
// closed.
func (cc *clientConn) unwatch(id uint32) {
	cc.mu.Lock()
	w := cc.watches[id]
	delete(cc.watches, id)
	cc.mu.Unlock()
	if w == nil {
		return
	}
	w.stop()
	w.end()
	cc.out.send(func(b []byte) []byte { return appendEmpty(b, opCancel, id) })
}

// A clientConn is one session of a Client.
//
// One goroutine at a time reads the connection: it holds the read role.
// A caller awaiting its reply takes the role when nobody holds it, so that
// a lone request is read by the goroutine that made it, without waking
// another (a goroutine hop costs more than the round trip on an idle
// machine). Its reply read, the caller hands the role on (see passRead):
// to the one call still waiting, to the background reader if several are,
// or, once nobody has held it for a while (see idleRead), to the background
// reader, which gives it back when a lone caller wants it.
type clientConn struct {
	ref            doorRef // its leases' door: cc
	c              *Client
	nc             net.Conn
	out            outbox
	session        ulid.ULID
	heartbeatEvery time.Duration
	timeout        time.Duration
	maxFrame       int
	maxKeyLen      int
	done           chan struct{} // closed when the session is lost

	// spare recycles the calls that have had their reply, with their
	// channels: two of each a Lock and Unlock otherwise. It is the conn's,
	// not global, so that a channel made in one synctest bubble never serves
	// in another.
	spare sync.Pool

	in     inbox         // the read role's
	rdl    deadline      // the read role's
	bgTurn chan struct{} // gives the background reader the read role
	kick   chan struct{} // has the heartbeat goroutine flush (see flushAside)
	idle   *time.Timer   // runs idleTimeout
	want   atomic.Bool   // a caller waits for the background reader's role

	mu       sync.Mutex
	nextID   uint32               // guarded by mu
	calls    map[uint32]*call     // requests awaiting a reply; guarded by mu
	waiting  callList             // calls whose callers await their reply; guarded by mu
	reader   *call                // the read role's holder: a call, bgReader or nil; guarded by mu
	free     time.Time            // when the read role was last left unheld; guarded by mu
	idleSet  bool                 // idle will fire; guarded by mu
	idleWait time.Duration        // idle's next wait; guarded by mu
	leases   map[ulid.ULID]*Lease // leases held; guarded by mu
	succ     map[ulid.ULID]*call  // named Locks by the lock id they follow; guarded by mu
	watches  map[uint32]*watcher  // by request id; guarded by mu
	gaveUp   map[string]*gaveUp   // keys of Locks given up unanswered; guarded by mu
	err      error                // why the session was lost; guarded by mu
}

// gaveUp counts the Locks of a key whose callers gave up before their
// answers came. An answer may yet grant the key, which is then released;
// until the answers have come, the client's next Locks of the key wait, so
// that they never find the key held by a grant their own client gave up.
type gaveUp struct {
	n    int
	done chan struct{} // closed when n is back to 0
}

// newCall returns a call like c, with an empty channel.
func (cc *clientConn) newCall(c call) *call {
	cl, _ := cc.spare.Get().(*call)
	if cl == nil {
		cl, c.ch = new(call), make(chan reply, 2)
	} else {
		c.ch = cl.ch
	}
	*cl = c
	return cl
}

// A call is a request awaiting its reply.
type call struct {
	ch         chan reply // its reply, and maybe the read role before it (reply.turn)
	id         uint32     // its request id
	key        string
	lock       bool // a Lock or TryLock: its reply grants a lease
	wait       bool
	ttl        time.Duration
	keepAlive  time.Duration
	watch      *watcher  // a Watch: receives the Event frames answering it
	release    *Lease    // a Release of this lease, handed on once sent (see handOffLocked)
	frees      ulid.ULID // a Release's lock id: its OK releases a grant of the conn's lease of that id, if any
	abandoned  bool      // its caller has gone; guarded by the conn's mu
	prev, next *call     // in the conn's waiting; guarded by the conn's mu

	// A queued Lock the broker named to follow the lease pred, with the
	// lock id and token of its grant (see chain.go); guarded by the conn's
	// mu.
	named  bool
	pred   ulid.ULID
	nid    ulid.ULID
	ntoken uint64
}

type reply struct {
	payload []byte
	lease   *Lease
	err     error
	turn    bool // not a reply: the read role, handed to the call
	handed  bool // the grant of a hand-off (see handOffLocked)
	lost    bool // not from cl.ch: the session's loss, which may yet send there
}

// A callList is a list of calls.
type callList struct{ head, tail *call }

func (q *callList) push(cl *call) {
	cl.prev, cl.next = q.tail, nil
	if q.tail != nil {
		q.tail.next = cl
	} else {
		q.head = cl
	}
	q.tail = cl
}

// alone reports whether the list holds exactly one call.
func (q *callList) alone() bool { return q.head != nil && q.head == q.tail }

// has reports whether cl is in the list.
func (q *callList) has(cl *call) bool { return cl.prev != nil || q.head == cl }

func (q *callList) remove(cl *call) {
	if !q.has(cl) {
		return
	}
	if cl.prev != nil {
		cl.prev.next = cl.next
	} else {
		q.head = cl.next
	}
	if cl.next != nil {
		cl.next.prev = cl.prev
	} else {
		q.tail = cl.prev
	}
	cl.prev, cl.next = nil, nil
}

// dispatch handles one frame from the broker and returns the call it
// answered, if any.
func (cc *clientConn) dispatch(h header, p []byte) (*call, error) {
	if pushed, err := cc.pushed(h, p); pushed {
		return nil, err
	}
	return cc.answer(h, p)
}

// pushed handles a frame the broker sends unasked, and reports whether it
// was one.
func (cc *clientConn) pushed(h header, p []byte) (bool, error) {
	switch h.op {
	case opPong:
		return h.id == 0, nil // a heartbeat's, else a Ping's answer
	case opEvent:
		ev, err := decodeEvent(h.code, p)
		if err != nil {
			return true, fmt.Errorf("%w: event: %v", ErrProtocol, err)
		}
		cc.mu.Lock()
		w := cc.watches[h.id]
		cc.mu.Unlock()
		if w != nil {
			w.send(&ev)
		}
	case opRevoke:
		_, id, err := decodeLeaseMsg(p)
		if err != nil {
			return true, fmt.Errorf("%w: revoke: %v", ErrProtocol, err)
		}
		cc.mu.Lock()
		l := cc.leases[id]
		cc.mu.Unlock()
		if l != nil {
			l.revokeNow()
		}
	case opNext:
		m, err := decodeNext(p)
		if err != nil {
			return true, fmt.Errorf("%w: next: %v", ErrProtocol, err)
		}
		cc.name(h.id, m)
	case opStop:
		m, err := decodeStop(p)
		if err != nil {
			return true, fmt.Errorf("%w: stop: %v", ErrProtocol, err)
		}
		cc.stop(m)
	case opEnded:
		_, id, err := decodeLeaseMsg(p)
		if err != nil {
			return true, fmt.Errorf("%w: ended: %v", ErrProtocol, err)
		}
		reason, ok := reasonErrors[h.code]
		if !ok {
			reason = errSessionLost
		}
		cc.mu.Lock()
		l := cc.leases[id]
		delete(cc.leases, id)
		cc.mu.Unlock()
		if l != nil {
			l.end(reason)
		}
	default:
		return false, nil
	}
	return true, nil
}

// answer hands the call a frame answers its reply, and returns the call.
func (cc *clientConn) answer(h header, p []byte) (*call, error) {
	cc.mu.Lock()
	cl := cc.calls[h.id]
	delete(cc.calls, h.id)
	var released *Lease
	if cl != nil {
		cc.waiting.remove(cl)
		cc.answeredNamedLocked(cl)
		if h.op == opOK && cl.frees != (ulid.ULID{}) {
			// Under the hold that takes the call out, so that a loss of
			// the session now finds the lease released, not held.
			released = cc.unlockedLocked(cl.frees)
		}
	}
	// Out of calls, it can no longer be abandoned (see abandon).
	abandoned := cl != nil && cl.abandoned
	cc.mu.Unlock()
	if cl == nil {
		return nil, nil // the reply to a fire-and-forget release
	}
	if released != nil { // before its Unlock can return
		released.end(ErrReleased)
	}
	var r reply
	var bad error // the frame is wrong: it fails the call and the session
	switch h.op {
	case opGranted:
		if !cl.lock {
			bad = fmt.Errorf("%w: a grant answered a request that asked none", ErrProtocol)
			break
		}
		r.lease, r.err, bad = cc.granted(cl, p)
	case opError:
		r.err = decodeError(h.code, p) // a cancelled Lock's caller has gone: dropped below
	case opOK, opInfo, opStatsOK, opKeys:
		r.payload = bytes.Clone(p) // p is the reader's buffer
	case opPong:
	default:
		bad = fmt.Errorf("%w: unexpected op 0x%02x", ErrProtocol, h.op)
	}
	if bad != nil {
		r = reply{err: bad}
	}
	switch {
	case !abandoned:
		cl.ch <- r
	case r.lease != nil:
		cc.releaseAsync(r.lease, true)
	}
	if abandoned && cl.lock {
		cc.mu.Lock()
		cc.answeredLocked(cl.key)
		cc.mu.Unlock()
	}
	return cl, bad
}

// giveUpLocked counts a Lock of key given up unanswered.
func (cc *clientConn) giveUpLocked(key string) {
	g := cc.gaveUp[key]
	if g == nil {
		g = &gaveUp{done: make(chan struct{})}
		cc.gaveUp[key] = g
	}
	g.n++
}

// answeredLocked counts the answer, dealt with, of a Lock of key given up.
func (cc *clientConn) answeredLocked(key string) {
	if g := cc.gaveUp[key]; g != nil {
		if g.n--; g.n == 0 {
			delete(cc.gaveUp, key)
			close(g.done)
		}
	}
}

// granted makes the lease a Granted frame grants to cl, or counts one more
// grant of the lease it re-enters. If the session was lost since dispatch
// took cl out of the calls, which fail no longer answers, it returns the
// loss instead: the broker releases the grant with the session. An error
// in the frame is bad.
func (cc *clientConn) granted(cl *call, p []byte) (l *Lease, lost, bad error) {
	g, err := decodeGranted(p)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: granted: %v", ErrProtocol, err)
	}
	id, token, exp := g.id, g.token, g.exp
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.err != nil {
		return nil, cc.err, nil
	}
	if l := cc.leases[id]; l != nil {
		l.count++ // the client's count of a lease is guarded by the conn's mu
		return l, nil, nil
	}
	l = &Lease{key: cl.key, id: id, token: token, door: &cc.ref, count: 1}
	if !exp.IsZero() {
		// The broker renews a KeepAlive lease; Expires projects its renewals
		// up to the bound it keeps: grant time, exp less the TTL, plus max.
		l.ttl.Store(clientTTL(exp, cl.ttl, cl.keepAlive, time.Now()))
	}
	cc.leases[id] = l
	return l, nil, nil
}

// heartbeat pings the broker so that it knows the session lives; the pongs
// tell the reader the broker lives. It also writes for the read role's
// holder (see flushAside).
func (cc *clientConn) heartbeat() {
	t := time.NewTicker(cc.heartbeatEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			cc.out.send(func(b []byte) []byte { return appendEmpty(b, opPing, 0) })
		case <-cc.kick:
			cc.out.flush()
		case <-cc.done:
			return
		}
	}
}

// fail ends the session: its leases end, its calls fail, and the client
// reconnects unless it is closing.
func (cc *clientConn) fail(cause error) {
	cc.mu.Lock()
	if cc.err != nil {
		cc.mu.Unlock()
		return
	}
	closing := cc.c.isClosed()
	reason, err := errSessionLost, fmt.Errorf("%w: %v", ErrSessionLost, cause)
	if closing {
		reason, err = errClosed, ErrClosed
	}
	cc.err = err
	var waiting []*call
	for _, cl := range cc.calls {
		if !cl.abandoned {
			waiting = append(waiting, cl)
		}
	}
	leases, watches := cc.leases, cc.watches
	cc.calls, cc.leases, cc.succ, cc.watches = nil, nil, nil, nil
	cc.mu.Unlock()
	// Before anyone learns of the loss, so that a call made once it has
	// waits for the next session rather than find this one.
	cc.c.connLost(cc)
	cc.idle.Stop()
	for _, w := range watches {
		w.stop()
		w.end()
	}

	close(cc.done)
	cc.nc.Close()
	for _, l := range leases {
		l.end(reason)
	}
	for _, cl := range waiting {
		select {
		case cl.ch <- reply{err: err}:
		default: // it holds the read role's turn, and will find cc.err
		}
	}
}
