package lmx

import (
	"fmt"
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
// negative priorities are allowed. A waiting high-priority request is never
// overtaken by a lower one, so low priorities can wait for as long as higher
// ones keep arriving.
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
// lease. It needs a TTL; max must be positive (else ErrInvalidOption).
func KeepAlive(max time.Duration) LockOption { return LockOption{kind: optKeepAlive, d: max} }

// KeepOnDisconnect lets a remote lease outlive the session that asked for it,
// until its TTL runs out or it is released by id (what `lmx acquire` in a
// shell script needs). It needs a TTL (else ErrInvalidOption). In-process
// there is no session, and it changes nothing.
func KeepOnDisconnect() LockOption { return LockOption{kind: optKeepOnDisconnect} }

// request is a validated set of lock options.
type request struct {
	ttl              time.Duration
	keepAlive        time.Duration
	limit            int
	priority         int
	owner            string
	shared           bool
	keepOnDisconnect bool
}

// parseOptions applies opts over the defaults and validates the result.
func parseOptions(opts []LockOption) (request, error) {
	r := request{limit: 1}
	if len(opts) == 0 {
		return r, nil
	}
	for _, o := range opts {
		switch o.kind {
		case optTTL:
			if o.d < 0 {
				return r, fmt.Errorf("%w: negative TTL %v", ErrInvalidOption, o.d)
			}
			r.ttl = o.d
		case optLimit:
			if o.n < 1 || o.n > maxLimit {
				return r, fmt.Errorf("%w: Limit(%d) is outside 1..%d", ErrInvalidOption, o.n, maxLimit)
			}
			r.limit = int(o.n)
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
		}
	}
	if r.keepAlive > 0 && r.ttl == 0 {
		return r, fmt.Errorf("%w: KeepAlive needs a TTL", ErrInvalidOption)
	}
	if r.keepOnDisconnect && r.ttl == 0 {
		return r, fmt.Errorf("%w: KeepOnDisconnect needs a TTL", ErrInvalidOption)
	}
	return r, nil
}

// maxLimit bounds Limit so that holder counts fit the wire's 32 bits.
const maxLimit = 1<<31 - 1

// DefaultMaxKeyLen is the longest key, in bytes, a Broker accepts unless
// WithMaxKeyLen says otherwise.
const DefaultMaxKeyLen = 1024

// A BrokerOption configures a Broker made by NewBroker.
type BrokerOption func(*brokerConfig)

type brokerConfig struct {
	maxKeyLen int
}

// WithMaxKeyLen sets the longest key, in bytes, the broker accepts; longer
// keys fail with ErrInvalidKey. n <= 0 means DefaultMaxKeyLen.
func WithMaxKeyLen(n int) BrokerOption {
	return func(c *brokerConfig) {
		if n <= 0 {
			n = DefaultMaxKeyLen
		}
		c.maxKeyLen = n
	}
}
