package lmx

import (
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync"
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

// Dial connects to the broker at addr: "unix:///path/to/socket" or a bare
// path, "tcp://host:port" or "host:port" (see SplitAddr). ctx bounds the
// connection and handshake only; once Dial returns, the Client lives until
// Close.
func Dial(ctx context.Context, addr string, opts ...ClientOption) (*Client, error) {
	network, address, err := SplitAddr(addr)
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

// SplitAddr splits a broker address, as Dial and Ensure read it, into the
// network and address that Broker.Listen and net.Dial take:
// "unix:///path/to/socket", or a bare path starting with /, ./ or ../, is a
// Unix socket; "tcp://host:port" and "host:port" are TCP. Anything else is
// an error that says what an address may be.
func SplitAddr(addr string) (network, address string, err error) {
	bad := func(why string) (string, string, error) {
		return "", "", fmt.Errorf("lmx: address %q %s", addr, why)
	}
	switch {
	case addr == "":
		return bad("is empty")
	case strings.HasPrefix(addr, "/"), strings.HasPrefix(addr, "./"), strings.HasPrefix(addr, "../"):
		return "unix", addr, nil
	case !strings.Contains(addr, "://"):
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return bad("is not unix:///path, tcp://host:port, host:port or a socket's path")
		}
		return "tcp", addr, nil
	}
	u, err := url.Parse(addr)
	if err != nil {
		return "", "", fmt.Errorf("lmx: address %q: %w", addr, err)
	}
	switch u.Scheme {
	case "unix":
		if u.Host+u.Path == "" {
			return bad("has no socket path")
		}
		return "unix", u.Host + u.Path, nil
	case "tcp":
		if u.Host == "" {
			return bad("has no host:port")
		}
		return "tcp", u.Host, nil
	}
	return bad(fmt.Sprintf("has scheme %q, not unix or tcp", u.Scheme))
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
	return cc, checkKey(key, cc.maxKeyLen)
}
