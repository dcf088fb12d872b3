package lmx

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"math"
	"os"
	"time"
)

// A LockOption changes one request to Lock, TryLock or LockAll. Options are
// plain values: passing them allocates nothing. The zero LockOption does
// nothing.
type LockOption struct {
	kind optKind
	d    time.Duration
	n    int64
	s    string
}

type optKind uint8

const (
	optNone optKind = iota
	optTTL
	optLimit
	optPriority
	optOwner
	optShared
	optKeepAlive
	optKeepOnDisconnect
	optPreempt
	optNoPreempt
	optLockDelay
)

// TTL makes the lease end by itself d after it is granted (or last extended)
// unless it is released first: Done closes and Err matches ErrExpired. TTL(0),
// the default, means no TTL: an in-process lease lives until it is released, a
// remote one as long as its session. A negative d is ErrInvalidOption.
func TTL(d time.Duration) LockOption { return LockOption{kind: optTTL, d: d} }

// Limit makes the key a semaphore that admits n holders at once. The first
// request that creates the key fixes its limit; while the key is live, a
// request with another limit fails with ErrLimitMismatch. The default is 1: a
// request without Limit asks for a mutex. n < 1 is ErrInvalidOption.
func Limit(n int) LockOption { return LockOption{kind: optLimit, n: int64(n)} }

// Priority orders the request in the key's queue: higher priorities are
// granted first, equal priorities in arrival order. The default is 0;
// negative priorities are allowed; p must fit in 32 bits (else
// ErrInvalidOption). A waiting high-priority request is never
// overtaken by a lower one. Starvation is bounded: a waiter is overtaken by
// at most 64 later requests of higher priority; after that, every request
// queues behind it, whatever its priority.
func Priority(p int) LockOption { return LockOption{kind: optPriority, n: int64(p)} }

// Owner names who asks. A request whose owner already holds the key is
// granted at once with the same lease (same id and token) and counts: the key
// is released when every such grant has been unlocked. A request made while
// the owner's earlier request still waits queues like any other. A shared
// holder cannot re-enter for an exclusive hold (ErrInvalidOption). The
// default, "", means every request is its own owner.
func Owner(id string) LockOption { return LockOption{kind: optOwner, s: id} }

// Shared asks for a read hold: any number of shared holders together, no
// exclusive holder with them. Queue order still rules: an exclusive request at
// the head of the queue holds back shared requests behind it, so writers do
// not starve. Shared holders do not count against the key's Limit.
func Shared() LockOption { return LockOption{kind: optShared} }

// KeepAlive renews a TTL lease automatically while the holder's process
// lives, but never past max after the grant: then it expires like any TTL
// lease. It needs a TTL; max must be positive (else ErrInvalidOption). The
// broker renews a Client's lease itself, while the Client's session lives.
func KeepAlive(max time.Duration) LockOption { return LockOption{kind: optKeepAlive, d: max} }

// KeepOnDisconnect lets a remote lease outlive the session that asked for it,
// until its TTL runs out or it is released by id (what `lmx acquire` in a
// shell script needs). It needs a TTL (else ErrInvalidOption). In-process
// there is no session, and it changes nothing.
func KeepOnDisconnect() LockOption { return LockOption{kind: optKeepOnDisconnect} }

// Preempt lets a waiting request take the key from holders of lower
// priority that stand in its way, once it is at the head of the queue: each
// such holder's Revoked channel is closed, and a holder that has not let go
// grace later loses its lease with ErrPreempted. The key is then granted to
// the request, with a new fencing token. Holders asked with NoPreempt, or of
// equal or higher priority, are never preempted. grace must not be negative
// (else ErrInvalidOption); 0 preempts at once. The default is not to preempt.
// A holder through a Client that is between calls learns of the revocation
// within about a millisecond, or up to 100 milliseconds right after a burst
// of calls (see Client), so a grace shorter than that may not be one it can
// use.
func Preempt(grace time.Duration) LockOption { return LockOption{kind: optPreempt, d: grace} }

// NoPreempt protects the lease from preemption, whatever the priority of
// the waiters. The default is that a lease may be preempted by a waiter of
// higher priority that asks for it.
func NoPreempt() LockOption { return LockOption{kind: optNoPreempt} }

// LockDelay makes the key wait d before it is granted again when this lease
// ends without being released: by expiry, a lost session or ForceUnlock
// (Chubby's lock-delay). A holder that vanished may still be writing; the
// delay protects resources that cannot check fencing tokens. Unlock and
// preemption are not delayed. The default is the broker's WithLockDelay,
// itself 0; a negative d is ErrInvalidOption.
func LockDelay(d time.Duration) LockOption { return LockOption{kind: optLockDelay, d: d} }

// request is a validated set of lock options.
type request struct {
	ttl              time.Duration
	keepAlive        time.Duration
	limit            int
	ownLimit         bool // a live key's own limit, not limit (live-mutex's max null)
	priority         int
	owner            string
	shared           bool
	keepOnDisconnect bool
	preempt          time.Duration // grace; < 0 for no preemption
	noPreempt        bool
	lockDelay        time.Duration // < 0 for the broker's default
}

// defaultRequest is a request with no options: an exclusive lock, no TTL,
// no preemption grace, the broker's default lock delay.
func defaultRequest() request { return request{limit: 1, preempt: -1, lockDelay: -1} }

// plainRequest is the request of a call with no options, shared so that
// such a call does not build one. Nothing writes to it.
var plainRequest = defaultRequest()

// parseOptions applies opts over the defaults and validates the result.
func parseOptions(opts []LockOption) (request, error) {
	r := defaultRequest()
	if len(opts) == 0 {
		return r, nil
	}
	for _, o := range opts {
		switch o.kind {
		case optTTL:
			r.ttl = o.d
		case optLimit:
			r.limit = int(o.n) // Limit took an int
		case optPriority:
			r.priority = int(o.n)
		case optOwner:
			r.owner = o.s
		case optShared:
			r.shared = true
		case optKeepAlive:
			if o.d <= 0 {
				return r, fmt.Errorf("%w: KeepAlive(%v) must be positive", ErrInvalidOption, o.d)
			}
			r.keepAlive = o.d
		case optKeepOnDisconnect:
			r.keepOnDisconnect = true
		case optPreempt:
			if o.d < 0 {
				return r, fmt.Errorf("%w: Preempt(%v) must not be negative", ErrInvalidOption, o.d)
			}
			r.preempt = o.d
		case optNoPreempt:
			r.noPreempt = true
		case optLockDelay:
			if o.d < 0 {
				return r, fmt.Errorf("%w: LockDelay(%v) must not be negative", ErrInvalidOption, o.d)
			}
			r.lockDelay = o.d
		}
	}
	return r, r.validate()
}

// validate checks a request, whether it came from options or the wire.
func (r *request) validate() error {
	switch {
	case r.ttl < 0:
		return fmt.Errorf("%w: negative TTL %v", ErrInvalidOption, r.ttl)
	case r.limit < 1 || r.limit > maxLimit:
		return fmt.Errorf("%w: Limit(%d) is outside 1..%d", ErrInvalidOption, r.limit, maxLimit)
	case r.priority < math.MinInt32 || r.priority > math.MaxInt32:
		return fmt.Errorf("%w: Priority(%d) is outside the 32-bit range", ErrInvalidOption, r.priority)
	case r.keepAlive > 0 && r.ttl == 0:
		return fmt.Errorf("%w: KeepAlive needs a TTL", ErrInvalidOption)
	case r.keepOnDisconnect && r.ttl == 0:
		return fmt.Errorf("%w: KeepOnDisconnect needs a TTL", ErrInvalidOption)
	}
	return nil
}

// maxLimit bounds Limit so that holder counts fit the wire's 32 bits.
const maxLimit = 1<<31 - 1

// DefaultMaxKeyLen is the longest key, in bytes, a Broker accepts unless
// WithMaxKeyLen says otherwise.
const DefaultMaxKeyLen = 1024

// A BrokerOption configures a Broker made by NewBroker.
type BrokerOption func(*brokerConfig)

type brokerConfig struct {
	lockDelay         time.Duration
	maxKeyLen         int
	authToken         string
	tlsConfig         *tls.Config
	heartbeat         time.Duration
	sessionTimeout    time.Duration
	maxFrame          int
	maxSessions       int
	maxWaitersPerSess int
	socketMode        os.FileMode
	logger            *slog.Logger
}

// Defaults of the network door, each changed by the option that names it.
const (
	DefaultHeartbeat         = time.Second
	DefaultSessionTimeout    = 5 * time.Second
	DefaultMaxFrame          = 1 << 20
	DefaultMaxSessions       = 10000
	DefaultMaxWaitersPerSess = 10000
	DefaultSocketMode        = 0o600
)

func defaultBrokerConfig() brokerConfig {
	return brokerConfig{
		maxKeyLen:         DefaultMaxKeyLen,
		heartbeat:         DefaultHeartbeat,
		sessionTimeout:    DefaultSessionTimeout,
		maxFrame:          DefaultMaxFrame,
		maxSessions:       DefaultMaxSessions,
		maxWaitersPerSess: DefaultMaxWaitersPerSess,
		socketMode:        DefaultSocketMode,
		logger:            slog.Default(),
	}
}

// orDefault returns v, or def when v is not positive.
func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// WithMaxKeyLen sets the longest key, in bytes, the broker accepts; longer
// keys fail with ErrInvalidKey. n <= 0 means DefaultMaxKeyLen (1,024).
func WithMaxKeyLen(n int) BrokerOption {
	return func(c *brokerConfig) { c.maxKeyLen = orDefault(n, DefaultMaxKeyLen) }
}

// WithLockDelay sets the lock-delay of leases asked without LockDelay: how
// long a key waits before it is granted again after a lease ended by
// expiry, a lost session or ForceUnlock. The default is 0, no delay.
func WithLockDelay(d time.Duration) BrokerOption {
	return func(c *brokerConfig) { c.lockDelay = max(d, 0) }
}

// WithAuthToken makes the network door refuse clients whose handshake does
// not carry token (ErrAuth), and log each refusal. The default, "", admits
// every client that can reach the socket.
func WithAuthToken(token string) BrokerOption {
	return func(c *brokerConfig) { c.authToken = token }
}

// WithTLS makes Listen("tcp", ...) serve TLS with cfg; set cfg.ClientAuth
// for mutual TLS. It does not change Serve, whose listener is the caller's,
// nor Unix sockets. The default, nil, is plain TCP.
func WithTLS(cfg *tls.Config) BrokerOption {
	return func(c *brokerConfig) { c.tlsConfig = cfg }
}

// WithHeartbeat sets how often clients are asked to send a heartbeat, and
// how long a session may stay silent before the broker ends it and releases
// its leases. Values <= 0 mean DefaultHeartbeat (1s) and
// DefaultSessionTimeout (5s); a timeout shorter than two heartbeats is
// raised to two.
func WithHeartbeat(interval, timeout time.Duration) BrokerOption {
	return func(c *brokerConfig) {
		c.heartbeat = orDefault(interval, DefaultHeartbeat)
		c.sessionTimeout = max(orDefault(timeout, DefaultSessionTimeout), 2*c.heartbeat)
	}
}

// WithMaxFrame sets the largest frame payload, in bytes, the broker accepts;
// a longer frame ends the connection before anything is allocated for it.
// n <= 0 means DefaultMaxFrame (1 MiB); n is capped at 1 GiB.
func WithMaxFrame(n int) BrokerOption {
	return func(c *brokerConfig) { c.maxFrame = min(orDefault(n, DefaultMaxFrame), maxFrameCap) }
}

// maxFrameCap bounds WithMaxFrame: far below the header's 32-bit length.
const maxFrameCap = 1 << 30

// WithMaxSessions bounds the network sessions open at once; a client past it
// is refused with ErrBusy. n <= 0 means DefaultMaxSessions (10,000).
func WithMaxSessions(n int) BrokerOption {
	return func(c *brokerConfig) { c.maxSessions = orDefault(n, DefaultMaxSessions) }
}

// WithMaxWaiters bounds the Lock requests one session may have queued at
// once; past it a Lock fails with ErrBusy. n <= 0 means
// DefaultMaxWaitersPerSess (10,000).
func WithMaxWaiters(n int) BrokerOption {
	return func(c *brokerConfig) { c.maxWaitersPerSess = orDefault(n, DefaultMaxWaitersPerSess) }
}

// WithSocketMode sets the permissions of Unix sockets made by Listen. The
// default, 0 or DefaultSocketMode, is 0600: only the broker's user may connect.
func WithSocketMode(mode os.FileMode) BrokerOption {
	return func(c *brokerConfig) {
		if mode == 0 {
			mode = DefaultSocketMode
		}
		c.socketMode = mode
	}
}

// WithLogger sets where the network door logs refused clients, protocol
// errors and the ends of sessions: a service passes its own logger. A
// session that hangs up holding nothing is logged at Debug; one that ends by
// a fault or releases leases at Info, but when many end within a second
// (clients closing together, a network failing), the first is logged and one
// Info line, "lmx: sessions ended", sums up the rest. The default, nil, is
// slog.Default().
func WithLogger(l *slog.Logger) BrokerOption {
	return func(c *brokerConfig) {
		if l == nil {
			l = slog.Default()
		}
		c.logger = l
	}
}
