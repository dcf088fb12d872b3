package lmx

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
)

// A Client is a door to a broker's lock table over a connection: the same
// Locker and Admin calls as the broker's own, for another process or
// machine. Many goroutines may share one Client; their requests share its
// connection. A lone request's reply is read by the goroutine that waits for
// it, so an idle Client costs no goroutine hop; what the broker sends
// unasked (a lease's end, a revocation, a watch event) is read as it comes
// while a call is in flight, and within about a millisecond once none has
// been for a while. Right after a burst of calls that bound grows to at most
// 100 milliseconds (see idleRead).
//
// Goroutines of one Client that queue for a key behind each other pass it
// on without a round trip: the broker names to the Client the Locks that
// wait right behind its lease, and Unlock gives the key to the next one as
// soon as its Release is on its way (see PROTOCOL.md, "Hand-offs inside a
// session"). The queue's order across clients and the fencing tokens are as
// if every grant came from the broker; a request of higher priority from
// elsewhere goes first once the Client has heard of it, a round trip later.
// Plain Locks only: those with a TTL, an Owner, Shared, KeepOnDisconnect, or
// on a key of limit above 1 wait for the broker's grant.
//
// The connection is a session. If it is lost (the broker went away, or
// heartbeats stopped arriving), every lease the Client held ends with an
// error matching ErrSessionLost, since the broker releases them, and calls
// in flight fail with ErrSessionLost. The Client then reconnects in the
// background with jittered, capped backoff; calls made meanwhile wait for
// the new session, as long as their ctx allows. Nothing is re-acquired on
// the caller's behalf.
type Client struct {
	network, address string
	cfg              clientConfig

	mu     sync.Mutex
	conn   *clientConn        // nil while disconnected; guarded by mu
	ready  chan struct{}      // closed when conn is set; guarded by mu
	closed bool               // guarded by mu
	life   context.Context    // ends with Close
	cancel context.CancelFunc // ends life
	wg     sync.WaitGroup
}

var (
	_ Locker = (*Client)(nil)
	_ Admin  = (*Client)(nil)
)

// A ClientOption configures a Client made by Dial.
type ClientOption func(*clientConfig)

type clientConfig struct {
	token      string
	tlsConfig  *tls.Config
	dial       func(ctx context.Context, network, address string) (net.Conn, error)
	minBackoff time.Duration
	maxBackoff time.Duration
}

// Defaults of the client's reconnection backoff.
const (
	DefaultMinBackoff = 50 * time.Millisecond
	DefaultMaxBackoff = 5 * time.Second
)

// WithDialToken sets the auth token the client presents to a broker made
// with WithAuthToken. The default is none.
func WithDialToken(token string) ClientOption {
	return func(c *clientConfig) { c.token = token }
}

// WithDialTLS makes the client speak TLS over TCP with cfg (a client
// certificate in cfg makes it mutual TLS). The default, nil, is plain TCP.
func WithDialTLS(cfg *tls.Config) ClientOption {
	return func(c *clientConfig) { c.tlsConfig = cfg }
}

// WithDialer sets how the client opens connections, first and on every
// reconnection. The default, nil, is a net.Dialer.
func WithDialer(dial func(ctx context.Context, network, address string) (net.Conn, error)) ClientOption {
	return func(c *clientConfig) { c.dial = dial }
}

// WithReconnectBackoff bounds the wait between reconnection attempts: the
// first waits about min, each next one twice as long up to max, with jitter.
// Values <= 0 mean DefaultMinBackoff (50ms) and DefaultMaxBackoff (5s).
func WithReconnectBackoff(min, max time.Duration) ClientOption {
	return func(c *clientConfig) {
		c.minBackoff = orDefault(min, DefaultMinBackoff)
		c.maxBackoff = orDefault(max, DefaultMaxBackoff)
	}
}

// Dial connects to the broker at addr: "unix:///path/to/socket",
// "tcp://host:port" or "host:port" (TCP). ctx bounds the connection and
// handshake only; once Dial returns, the Client lives until Close.
func Dial(ctx context.Context, addr string, opts ...ClientOption) (*Client, error) {
	network, address, err := parseAddr(addr)
	if err != nil {
		return nil, err
	}
	c := &Client{
		network: network,
		address: address,
		cfg:     clientConfig{minBackoff: DefaultMinBackoff, maxBackoff: DefaultMaxBackoff},
		ready:   make(chan struct{}),
	}
	c.life, c.cancel = context.WithCancel(context.Background())
	for _, o := range opts {
		o(&c.cfg)
	}
	if c.cfg.dial == nil {
		var d net.Dialer
		c.cfg.dial = d.DialContext
	}
	cc, err := c.connect(ctx)
	if err != nil {
		c.cancel()
		return nil, err
	}
	c.setConn(cc)
	return c, nil
}

// parseAddr splits a broker address into network and address.
func parseAddr(addr string) (network, address string, err error) {
	if !strings.Contains(addr, "://") {
		return "tcp", addr, nil
	}
	u, err := url.Parse(addr)
	if err != nil {
		return "", "", fmt.Errorf("lmx: address %q: %w", addr, err)
	}
	switch u.Scheme {
	case "unix":
		return "unix", u.Host + u.Path, nil
	case "tcp":
		return "tcp", u.Host, nil
	}
	return "", "", fmt.Errorf("lmx: address %q: scheme %q is not unix or tcp", addr, u.Scheme)
}

// start runs f in a goroutine that Close waits for.
func (c *Client) start(f func()) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
}

// connect opens a connection and makes it a session.
func (c *Client) connect(ctx context.Context) (*clientConn, error) {
	nc, err := c.cfg.dial(ctx, c.network, c.address)
	if err != nil {
		return nil, fmt.Errorf("lmx: dial %s %s: %w", c.network, c.address, err)
	}
	// ctx ends the handshake by making its I/O fail.
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	cc, err := c.handshake(ctx, nc)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	cc.free, cc.idleSet, cc.idleWait = time.Now(), true, idleRead
	cc.idle = time.AfterFunc(idleRead, cc.idleTimeout)
	c.start(cc.background)
	c.start(cc.heartbeat)
	return cc, nil
}

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

func (c *Client) setConn(cc *clientConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		cc.nc.Close()
		return
	}
	c.conn = cc
	close(c.ready)
}

// getConn returns the session, waiting for a reconnection if need be.
func (c *Client) getConn(ctx context.Context) (*clientConn, error) {
	for {
		c.mu.Lock()
		cc, ready, closed := c.conn, c.ready, c.closed
		c.mu.Unlock()
		switch {
		case closed:
			return nil, ErrClosed
		case cc != nil:
			return cc, nil
		}
		select {
		case <-ready:
		case <-c.life.Done():
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// connLost forgets a lost session and starts reconnecting.
func (c *Client) connLost(cc *clientConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != cc {
		return
	}
	c.conn = nil
	c.ready = make(chan struct{})
	if !c.closed {
		c.start(c.reconnect)
	}
}

// reconnect dials until a session is made or the client is closed.
func (c *Client) reconnect() {
	backoff := c.cfg.minBackoff
	for {
		wait := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-time.After(wait):
		case <-c.life.Done():
			return
		}
		ctx, cancel := context.WithTimeout(c.life, c.cfg.maxBackoff+DefaultSessionTimeout)
		cc, err := c.connect(ctx)
		cancel()
		if err == nil {
			c.setConn(cc)
			return
		}
		backoff = min(2*backoff, c.cfg.maxBackoff)
	}
}

// Close ends the session: the broker releases the client's leases, which
// end with an error matching ErrLeaseLost and ErrClosed, and calls in flight
// fail with ErrClosed. Later calls fail with ErrClosed. Close is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.cancel()
	cc := c.conn
	c.mu.Unlock()
	if cc != nil {
		cc.fail(ErrClosed)
	}
	c.wg.Wait()
	return nil
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Lock waits until the broker grants key and returns the lease. A wait cut
// short by ctx returns ctx.Err() at once and leaves nothing held: the broker
// is told to drop the request, and a grant that raced it is released when
// it arrives, about a round trip later. Until then, other clients may find
// the key held; this client's next Lock or TryLock of the key waits for it.
func (c *Client) Lock(ctx context.Context, key string, opts ...LockOption) (*Lease, error) {
	return c.acquire(ctx, key, opts, true)
}

// TryLock asks the broker to grant key if it can be granted now without
// overtaking a queued waiter; otherwise it fails with ErrLocked.
func (c *Client) TryLock(ctx context.Context, key string, opts ...LockOption) (*Lease, error) {
	return c.acquire(ctx, key, opts, false)
}

func (c *Client) acquire(ctx context.Context, key string, opts []LockOption, wait bool) (*Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r, err := parseOptions(opts)
	if err != nil {
		return nil, err
	}
	cc, err := c.connFor(ctx, key)
	if err != nil {
		return nil, err
	}
	rep, err := cc.roundTrip(ctx, call{key: key, lock: true, wait: wait, ttl: r.ttl, keepAlive: r.keepAlive},
		func(b []byte, id uint32) []byte { return appendLock(b, id, key, &r, wait) })
	if err != nil {
		return nil, err
	}
	return rep.lease, nil
}

// Release ends the lease of key whose lock id is id, as its Unlock would, on
// whichever client or process holds it.
func (c *Client) Release(ctx context.Context, key string, id ulid.ULID) error {
	cc, err := c.connFor(ctx, key)
	if err != nil {
		return err
	}
	// The broker tells of the end of a lease of this session in its answer,
	// not in an Ended frame: dispatch counts it released (see call.frees).
	_, err = cc.roundTrip(ctx, call{key: key, frees: id}, func(b []byte, reqID uint32) []byte { return appendRelease(b, reqID, key, id) })
	return err
}

// appendRelease appends a Release frame of the lease of key with lock id id.
func appendRelease(b []byte, reqID uint32, key string, id ulid.ULID) []byte {
	return appendLeaseOp(b, opRelease, 0, reqID, leaseMsg{key: key, id: id})
}

// ForceUnlock ends every lease of key with ErrForced; see Broker.ForceUnlock.
func (c *Client) ForceUnlock(ctx context.Context, key string) error {
	_, err := c.request(ctx, key, keyFrame(opForce, key))
	return err
}

// Inspect describes key's holders and waiters; see Broker.Inspect. It lists
// at most 4,096 of each.
func (c *Client) Inspect(ctx context.Context, key string) (KeyInfo, error) {
	rep, err := c.request(ctx, key, keyFrame(opInspect, key))
	if err != nil {
		return KeyInfo{}, err
	}
	return decodeInfo(key, rep.payload)
}

// Watch streams the events of the broker's keys that start with prefix,
// like Broker.Watch, until ctx ends, the client closes or its session is
// lost; then the channel is closed.
func (c *Client) Watch(ctx context.Context, prefix string) (<-chan Event, error) {
	cc, err := c.getConn(ctx)
	if err != nil {
		return nil, err
	}
	ch := make(chan Event, DefaultWatchBuffer)
	w := &watcher{prefix: prefix, sink: chanSink(ch)}
	var once sync.Once
	w.end = func() { once.Do(func() { close(ch) }) }
	_, err = cc.roundTrip(ctx, call{watch: w}, func(b []byte, id uint32) []byte {
		return appendKeyOp(b, opWatch, id, prefix)
	})
	if err != nil {
		if w.done != nil { // it was registered: drop it here and at the broker
			w.done()
		}
		return nil, err
	}
	context.AfterFunc(ctx, w.done)
	return ch, nil
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

// Ping makes a round trip to the broker.
func (c *Client) Ping(ctx context.Context) error {
	cc, err := c.getConn(ctx)
	if err != nil {
		return err
	}
	_, err = cc.roundTrip(ctx, call{}, func(b []byte, id uint32) []byte { return appendEmpty(b, opPing, id) })
	return err
}

// List returns the broker's live keys that start with prefix; see
// Broker.List.
func (c *Client) List(ctx context.Context, prefix string, limit int) ([]KeyStat, error) {
	cc, err := c.getConn(ctx)
	if err != nil {
		return nil, err
	}
	rep, err := cc.roundTrip(ctx, call{}, func(b []byte, id uint32) []byte {
		return appendList(b, id, listMsg{prefix: prefix, limit: uint64(listLimit(limit))})
	})
	if err != nil {
		return nil, err
	}
	return decodeKeys(rep.payload)
}

// Stats counts what the broker's table holds and has done.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	cc, err := c.getConn(ctx)
	if err != nil {
		return Stats{}, err
	}
	rep, err := cc.roundTrip(ctx, call{}, func(b []byte, id uint32) []byte { return appendEmpty(b, opStats, id) })
	if err != nil {
		return Stats{}, err
	}
	return decodeStatsOK(rep.payload)
}

func keyFrame(o op, key string) func([]byte, uint32) []byte {
	return func(b []byte, id uint32) []byte {
		return appendKeyOp(b, o, id, key)
	}
}

// request makes a round trip about key.
func (c *Client) request(ctx context.Context, key string, f func([]byte, uint32) []byte) (reply, error) {
	cc, err := c.connFor(ctx, key)
	if err != nil {
		return reply{}, err
	}
	return cc.roundTrip(ctx, call{key: key}, f)
}

// connFor returns the session to make a request about key on.
func (c *Client) connFor(ctx context.Context, key string) (*clientConn, error) {
	cc, err := c.getConn(ctx)
	if err != nil {
		return nil, err
	}
	return cc, cc.checkKey(key)
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

// idleRead is how long the read role may go unheld before the background
// reader takes it, which bounds how late a frame that answers no request
// (a lease's end, a revocation, a watch event) is read.
//
// A timer checks. Each time it fires it wakes a thread, which on a machine
// whose idle CPUs sleep costs a burst of calls milliseconds of round trips
// (it moves them off the CPU their peer runs on). So each check that finds
// calls still coming doubles the wait before the next, up to maxIdleWait,
// and the wait is back to idleRead once the background reader has taken the
// role.
const (
	idleRead    = time.Millisecond
	maxIdleWait = 100 * time.Millisecond
)

// bgReader stands for the background reader where a call holds the role.
var bgReader = new(call)

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

func (cc *clientConn) checkKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	if len(key) > cc.maxKeyLen {
		return fmt.Errorf("%w: key of %d bytes, the limit is %d", ErrInvalidKey, len(key), cc.maxKeyLen)
	}
	return nil
}

// roundTrip sends the frame f builds, under a fresh request id, as the call
// c, and waits for its reply. If ctx ends first it returns ctx.Err() at
// once; a queued Lock is cancelled at the broker, and a grant that arrives
// anyway is released. A Lock waits first for the answers to the Locks of
// its key given up (see gaveUp).
func (cc *clientConn) roundTrip(ctx context.Context, c call, f func([]byte, uint32) []byte) (reply, error) {
	cl := cc.newCall(c)
	cc.mu.Lock()
	for cl.lock && len(cc.gaveUp) > 0 && cc.err == nil {
		g := cc.gaveUp[cl.key]
		if g == nil {
			break
		}
		cc.mu.Unlock()
		select {
		case <-g.done:
		case <-cc.done:
		case <-ctx.Done():
			cc.spare.Put(cl)
			return reply{}, ctx.Err()
		}
		cc.mu.Lock()
	}
	if cc.err != nil {
		err := cc.err
		cc.mu.Unlock()
		cc.spare.Put(cl)
		return reply{}, err
	}
	cc.nextID++
	if cc.nextID == 0 { // 0 is for frames that answer nothing
		cc.nextID++
	}
	id := cc.nextID
	cl.id = id
	cc.calls[id] = cl
	busy := len(cc.calls) > 1
	if cl.watch != nil { // its events may come before its answer
		cc.watches[id] = cl.watch
		cl.watch.done = func() { cc.unwatch(id) }
	}
	// The frame is queued under mu, so that the broker reads a Release
	// and a Cancel in the order in which they change the chain of named
	// Locks (see handOffLocked and unlink).
	added := cc.out.add(func(b []byte) []byte { return f(b, id) })
	if added && cl.release != nil {
		cc.handOffLocked(cl.release)
	}
	cc.mu.Unlock()
	if !added {
		cc.fail(cc.out.failure())
	}
	if busy {
		// Other calls are in flight: let their goroutines add their frames
		// too, so that one write carries them all.
		runtime.Gosched()
	}
	if err := cc.out.flush(); err != nil {
		cc.fail(err)
	}
	if r, ok := cc.await(ctx, cl, id); ok {
		if !r.lost && cl.watch == nil {
			cc.spare.Put(cl) // nothing refers to it any more
		}
		return r, r.err
	}
	cc.mu.Lock()
	_, pending := cc.calls[id]
	cl.abandoned = pending
	if pending && cl.lock {
		cc.giveUpLocked(cl.key)
	}
	cancel := pending && (cl.lock && cl.wait || cl.watch != nil)
	if cl.named {
		cc.unlink(cl)
	}
	if cancel {
		// Queued under mu: the broker reads it before any Release that
		// hands the key past cl (see unlink).
		cc.out.add(func(b []byte) []byte { return appendEmpty(b, opCancel, id) })
	}
	cc.waiting.remove(cl)
	if cc.reader == cl && cc.err == nil {
		cc.passRead()
	}
	cc.mu.Unlock()
	switch {
	case !pending: // the reply raced ctx
		r := <-cl.ch
		if r.turn { // passed on above
			r = <-cl.ch
		}
		if r.lease != nil {
			r.lease.Unlock(context.Background())
		}
	case cancel:
		if err := cc.out.flush(); err != nil {
			cc.fail(err)
		}
	}
	return reply{}, ctx.Err()
}

// await waits for the reply to cl, sent as request id, reading it itself
// if no other goroutine is reading the connection. It reports false if ctx
// ended first; the caller then hands the read role on if it holds it.
func (cc *clientConn) await(ctx context.Context, cl *call, id uint32) (reply, bool) {
	for {
		select {
		case r := <-cl.ch:
			if !r.turn {
				return cc.got(cl, r), true
			}
		default:
		}
		cc.mu.Lock()
		if err := cc.err; err != nil {
			cc.mu.Unlock()
			return reply{err: err, lost: true}, true
		}
		interrupt := false
		if cc.calls[id] == cl { // else its reply is in cl.ch
			if !cc.waiting.has(cl) {
				// Only now, its frame written, may it be handed the read
				// role: a reader stuck writing could deadlock with a
				// broker stuck writing to it.
				cc.waiting.push(cl)
			}
			switch {
			case cc.reader == nil:
				cc.reader = cl
			case cc.reader == bgReader && cc.waiting.alone():
				interrupt = !cc.want.Swap(true)
			}
		}
		mine := cc.reader == cl
		cc.mu.Unlock()
		if mine {
			got, err := cc.readFor(ctx, cl)
			switch {
			case err != nil:
				cc.fail(err) // the reply, if it has not come, is the failure
			case !got:
				return reply{}, false
			default:
				cc.mu.Lock()
				cc.passRead()
				cc.mu.Unlock()
			}
			continue
		}
		if interrupt {
			cc.interrupt()
		}
		select {
		case r := <-cl.ch:
			if !r.turn {
				return cc.got(cl, r), true
			}
		case <-ctx.Done():
			return reply{}, false
		}
	}
}

// got returns r, the reply to cl. A reply handed on (see handOffLocked) may come
// while cl holds the read role, unread or with its turn still in cl.ch; cl
// then hands the role on.
func (cc *clientConn) got(cl *call, r reply) reply {
	if r.handed {
		cc.mu.Lock()
		if cc.reader == cl && cc.err == nil {
			cc.passRead()
		}
		cc.mu.Unlock()
	}
	return r
}

// readFor reads and dispatches frames, holding the read role, until cl's
// reply has come (got), ctx has ended, or, for the background reader (cl
// is bgReader), a caller wants the role. Before it gives up the role it
// dispatches the frames it has buffered whole.
func (cc *clientConn) readFor(ctx context.Context, cl *call) (got bool, err error) {
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, cc.interrupt)
		defer stop()
	}
	for {
		// Renew the read deadline before looking at what would stop the
		// read: an interrupt sets those, then the deadline, so that it is
		// either seen here or makes the next read fail.
		cc.rdl.renew(cc.nc.SetReadDeadline, cc.timeout)
		if cl == bgReader && cc.want.Load() || ctx.Err() != nil {
			return false, nil
		}
		if len(cl.ch) > 0 { // a hand-off answered it
			return true, nil
		}
		h, p, err := cc.in.next()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(cc.rdl.at) {
				cc.rdl = deadline{} // interrupted, not timed out
				continue
			}
			return false, err
		}
		to, err := cc.dispatch(h, p)
		if err != nil {
			return false, err
		}
		if to != cl {
			continue
		}
		for {
			h, p, ok, err := cc.in.buffered()
			if !ok || err != nil {
				return true, err
			}
			if _, err := cc.dispatch(h, p); err != nil {
				return true, err
			}
		}
	}
}

// interrupt makes the read in progress, if any, fail at once.
func (cc *clientConn) interrupt() { cc.nc.SetReadDeadline(time.Unix(1, 0)) }

// passRead hands the read role on; the caller holds it and cc.mu. A call
// awaiting its reply alone gets it; with more than one waiting, the
// background reader does, for it reads on for all of them where a caller
// would hand the role on again at its reply, a goroutine hop each time.
// With none waiting, the background reader gets it at once if answers to
// given-up Locks are due (see gaveUp), which later Locks wait for, and
// otherwise once the role has gone unheld for idleRead (see idleTimeout).
func (cc *clientConn) passRead() {
	switch cl := cc.waiting.head; {
	case cl == nil && len(cc.gaveUp) == 0:
	case cc.waiting.alone():
		cc.reader = cl
		cl.ch <- reply{turn: true} // cl has no reply yet, and holds no turn
		return
	default:
		if cc.reader != bgReader {
			cc.reader = bgReader
			cc.bgTurn <- struct{}{}
		}
		return
	}
	cc.reader, cc.free = nil, time.Now()
	if !cc.idleSet { // a timer reset per call would cost more than the call
		cc.idleSet = true
		cc.idle.Reset(cc.idleWait)
	}
}

// idleTimeout gives the background reader the read role if nobody has held
// it for idleRead. If calls are still coming, it waits longer before it
// looks again.
func (cc *clientConn) idleTimeout() {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.idleSet = false
	if cc.reader == bgReader || cc.err != nil {
		return
	}
	if cc.reader != nil || time.Since(cc.free) < idleRead {
		cc.idleWait = min(2*cc.idleWait, maxIdleWait)
		if cc.reader == nil {
			cc.idleSet = true
			cc.idle.Reset(cc.idleWait)
		} // else passRead sets the timer again
		return
	}
	cc.idleWait = idleRead
	cc.reader = bgReader
	cc.bgTurn <- struct{}{}
}

// background reads the connection while no caller does: for the frames
// that answer no request (a lease's end, a revocation, a watch event, a
// heartbeat's pong) and to notice a broker that has gone.
func (cc *clientConn) background() {
	for {
		select {
		case <-cc.bgTurn:
		case <-cc.done:
			return
		}
		for held := true; held; {
			if _, err := cc.readFor(context.Background(), bgReader); err != nil {
				cc.fail(err)
				return
			}
			cc.mu.Lock()
			cc.want.Store(false)
			if cc.err == nil {
				cc.passRead() // which may leave the role here
			}
			held = cc.reader == bgReader && cc.err == nil
			cc.mu.Unlock()
		}
	}
}

// dispatch handles one frame from the broker and returns the call it
// answered, if any.
func (cc *clientConn) dispatch(h header, p []byte) (*call, error) {
	switch h.op {
	case opPong:
		if h.id == 0 {
			return nil, nil // a heartbeat's
		}
	case opEvent:
		ev, err := decodeEvent(h.code, p)
		if err != nil {
			return nil, fmt.Errorf("%w: event: %v", ErrProtocol, err)
		}
		cc.mu.Lock()
		w := cc.watches[h.id]
		cc.mu.Unlock()
		if w != nil {
			w.send(&ev)
		}
		return nil, nil
	case opRevoke:
		m, err := decodeLeaseMsg(p)
		if err != nil {
			return nil, fmt.Errorf("%w: revoke: %v", ErrProtocol, err)
		}
		cc.mu.Lock()
		l := cc.leases[m.id]
		cc.mu.Unlock()
		if l != nil {
			l.revokeNow()
		}
		return nil, nil
	case opNext:
		m, err := decodeNext(p)
		if err != nil {
			return nil, fmt.Errorf("%w: next: %v", ErrProtocol, err)
		}
		cc.name(h.id, m)
		return nil, nil
	case opStop:
		m, err := decodeStop(p)
		if err != nil {
			return nil, fmt.Errorf("%w: stop: %v", ErrProtocol, err)
		}
		cc.stop(m)
		return nil, nil
	case opEnded:
		m, err := decodeLeaseMsg(p)
		if err != nil {
			return nil, fmt.Errorf("%w: ended: %v", ErrProtocol, err)
		}
		id := m.id
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
		return nil, nil
	}
	cc.mu.Lock()
	cl := cc.calls[h.id]
	delete(cc.calls, h.id)
	var released *Lease
	if cl != nil {
		cc.waiting.remove(cl)
		if cl.named { // its successor follows the lease this grants
			delete(cc.succ, cl.pred)
			cl.named = false
		}
		if h.op == opOK && cl.frees != (ulid.ULID{}) {
			// Under the hold that takes the call out, so that a loss of
			// the session now finds the lease released, not held.
			released = cc.unlockedLocked(cl.frees)
		}
	}
	// Out of calls, it can no longer be abandoned (see roundTrip).
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
	l = &Lease{key: cl.key, id: id, token: token, door: cc, count: 1}
	if !exp.IsZero() {
		// The broker renews a KeepAlive lease; Expires projects its renewals
		// up to the bound it keeps: grant time, exp less the TTL, plus max.
		l.ttl = &ttlState{expires: exp, ttl: cl.ttl, heard: time.Now()}
		if cl.keepAlive > 0 {
			l.ttl.keepAlive, l.ttl.keepUntil = cl.keepAlive, exp.Add(cl.keepAlive-cl.ttl)
		}
	}
	cc.leases[id] = l
	return l, nil, nil
}

// name records that the broker named the queued Lock reqID to follow the
// lease m.pred, with lock id m.id and token m.token.
func (cc *clientConn) name(reqID uint32, m nextMsg) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cl := cc.calls[reqID]
	if cl == nil || !cl.lock || !cl.wait || cl.abandoned {
		return // its Cancel is on its way; the broker will grant it, or not
	}
	if cl.named { // named again, after a Stop
		delete(cc.succ, cl.pred)
	}
	cl.named, cl.pred, cl.nid, cl.ntoken = true, m.pred, m.id, m.token
	cc.succ[m.pred] = cl
}

// unlink takes the named call cl, whose Cancel is about to go, out of the
// chain: the Lock named to follow cl follows cl's predecessor, as it does
// at the broker once the Cancel has taken cl out of the queue.
func (cc *clientConn) unlink(cl *call) {
	delete(cc.succ, cl.pred)
	if next := cc.succ[cl.nid]; next != nil {
		delete(cc.succ, cl.nid)
		next.pred = cl.pred
		cc.succ[cl.pred] = next
	}
	cl.named = false
}

// stop answers the broker's Stop about m.key: no Lock is handed the key on
// any more, and the answer goes after the Releases of those that were.
func (cc *clientConn) stop(m stopMsg) {
	cc.mu.Lock()
	for pred, cl := range cc.succ {
		if cl.key == m.key {
			delete(cc.succ, pred)
			cl.named = false
		}
	}
	cc.mu.Unlock()
	cc.out.add(func(b []byte) []byte { return appendStop(b, opStopped, m) })
	cc.flushAside() // dispatch holds the read role
}

// handOffLocked gives the key of l, whose Release is queued, to the Lock
// the broker named to follow l, if any: that Lock returns at once with the
// lease the broker grants it on the Release. The Release must have been
// queued under the same hold of cc.mu, for the chain is the broker's only
// as long as the frames that changed it are read before the Release.
func (cc *clientConn) handOffLocked(l *Lease) {
	cl := cc.succ[l.id]
	if cl == nil {
		return
	}
	delete(cc.succ, l.id)
	delete(cc.calls, cl.id)
	cc.waiting.remove(cl)
	cl.named = false
	nl := &Lease{key: cl.key, id: cl.nid, token: cl.ntoken, door: cc, count: 1}
	cc.leases[nl.id] = nl
	cl.ch <- reply{lease: nl, handed: true}
	if cc.reader == cl {
		cc.interrupt() // it reads for the reply it has now
	}
}

// unlocked records that one grant of the lease with lock id id was
// released; when none is left, the lease leaves the conn and ends.
func (cc *clientConn) unlocked(id ulid.ULID) {
	cc.mu.Lock()
	l := cc.unlockedLocked(id)
	cc.mu.Unlock()
	if l != nil {
		l.end(ErrReleased)
	}
}

// unlockedLocked records that one grant of the lease with lock id id was
// released. When none is left, it takes the lease out of the conn and
// returns it, for the caller to end with ErrReleased.
func (cc *clientConn) unlockedLocked(id ulid.ULID) *Lease {
	l := cc.leases[id]
	if l == nil {
		return nil
	}
	if l.count--; l.count > 0 {
		return nil
	}
	delete(cc.leases, id)
	return l
}

// releaseAsync asks the broker to release one grant of l without waiting for
// the answer. The read role's holder passes aside, for it must not write
// (see flushAside).
func (cc *clientConn) releaseAsync(l *Lease, aside bool) {
	cc.mu.Lock()
	if cc.out.add(func(b []byte) []byte { return appendRelease(b, 0, l.key, l.id) }) {
		cc.handOffLocked(l)
	}
	cc.mu.Unlock()
	if aside {
		cc.flushAside()
	} else {
		cc.out.flush()
	}
	cc.unlocked(l.id)
}

// flushAside has the heartbeat goroutine write what the outbox holds: for
// the read role's holder, which must never block writing. Over a
// connection without buffers (net.Pipe), or with a backlog past the
// kernel's both ways, a reader stuck writing deadlocks with a broker stuck
// writing to it, until the write deadline drops the session.
func (cc *clientConn) flushAside() {
	select {
	case cc.kick <- struct{}{}:
	default: // a flush is due already, and writes what was added since
	}
}

// unlock implements door for a client's leases.
func (cc *clientConn) unlock(ctx context.Context, l *Lease) error {
	if l.Err() != nil {
		return l.notHeld()
	}
	if ctx.Err() != nil {
		// Release anyway, without waiting: if the frame is lost with the
		// session, the broker releases the lease with the session.
		cc.releaseAsync(l, false)
		return ctx.Err()
	}
	// The broker's OK ends the lease (see call.frees) before roundTrip
	// returns, and before a loss of the session could end it otherwise.
	// Cut short by ctx, the Release is on its way: its OK, if the session
	// lives to read it, ends the lease then.
	_, err := cc.roundTrip(ctx, call{key: l.key, release: l, frees: l.id}, func(b []byte, id uint32) []byte {
		return appendRelease(b, id, l.key, l.id)
	})
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, ErrNotHeld) && l.Err() != nil:
		return l.notHeld() // the Ended frame came first and says why
	}
	return err
}

// extend implements door for a client's leases.
func (cc *clientConn) extend(ctx context.Context, l *Lease, ttl time.Duration) error {
	if l.Err() != nil {
		return l.notHeld()
	}
	rep, err := cc.roundTrip(ctx, call{key: l.key}, func(b []byte, id uint32) []byte {
		return appendExtend(b, id, extendMsg{key: l.key, id: l.id, ttl: ttl})
	})
	if err != nil {
		if errors.Is(err, ErrNotHeld) && l.Err() != nil {
			return l.notHeld()
		}
		return err
	}
	exp, err := decodeExpiry(rep.payload)
	if err != nil {
		return err
	}
	l.heardExpiry(exp, time.Now())
	return nil
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
